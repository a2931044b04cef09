// The agent: `flannel-bin run`. A short sequence of named steps (src/agent/), in flannel's start-up order
// (docs/flannel-compat.md §10): open store -> config -> interface -> backend -> lease -> data plane -> rules ->
// announce (subnet.env) -> follow (peer loop + lease keeper, ready after the first peer sync is programmed).
// Data flows one way: store watch -> peer events -> backend -> desired state -> reconciler -> command queue -> kernel.
import type { NetworkConfig } from "./config.ts";
import { serveHealth } from "./health.ts";
import { formatCIDR } from "./ipmath.ts";
import { type Lease, subnetKey } from "./lease.ts";
import type { LeaseKeeper } from "./lease-protocol.ts";
import { logger } from "./log.ts";
import { renderMetrics } from "./metrics.ts";
import { sleep } from "./sleep.ts";
import { type SnapshotBox, watchPeers } from "./peer-watch.ts";
import { storeHealth } from "./store-health.ts";
import type { Store } from "./store.ts";
import { type Notifier, notifierFromEnv } from "./systemd-notify.ts";
import { readStartupKernel } from "./kernel/kernel-read.ts";
import { DataPlane, enableIPForward } from "./agent/data-plane.ts";
import { Lifecycle } from "./agent/lifecycle.ts";
import { PeerSet, runPeerLoop } from "./agent/peer-loop.ts";
import { collectStartupGarbage } from "./agent/startup-gc.ts";
import { Readiness } from "./agent/readiness.ts";
import { Backoff } from "./agent/retry.ts";
import {
  type Flags,
  type StepContext,
  announceStep,
  backendStep,
  configStep,
  interfaceStep,
  leaseStep,
  openStoreStep,
} from "./agent/steps.ts";
import { type TrafficRules, createTrafficRules } from "./agent/traffic-rules.ts";
import type { Backend } from "../backends/backend.ts";

const log = logger("agent");

export async function runAgent(f: Flags): Promise<number> {
  // Read (and removed from the environment, so ip/bridge/iptables never inherit it) before anything is spawned.
  const notifier = notifierFromEnv();
  const life = new Lifecycle(notifier);
  const readiness = new Readiness(notifier);
  // Store errors are counted where they happen (src/store-health.ts: every failed operation and watch break).
  const c: StepContext = { flags: f, signal: life.signal, readiness, storeError: () => {} };
  const peers = new PeerSet();
  const health = readiness.health;
  health.degraded = () => storeHealth.degraded();
  storeHealth.onChange(() => readiness.setDegraded(storeHealth.degraded()));
  // systemd's watchdog: a watch that stays behind a reachable store for 2 minutes (its supervisor could not catch it
  // up) means a wedged agent, which a restart fixes; an unreachable store is not (a restart would not bring it back).
  readiness.addLiveness("store watch", () => !storeHealth.up || storeHealth.lagSeconds() < 120);
  const port = f["healthz-port"];
  const server = port > 0 ? serveHealth(health, f["healthz-ip"], port) : null;
  if (server) log.info(`health API on http://${f["healthz-ip"]}:${server.port} (/healthz, /readyz, /metrics)`);

  let store: Store | null = null;
  let dataPlane: DataPlane | null = null;
  let rules: TrafficRules | null = null;
  try {
    notifier.keepExtending(); // a slow store or a missing config must not make systemd kill the start
    store = await openStoreStep(c);
    if (!store) return life.exitCode;
    const cfg = await configStep(c, store);
    if (!cfg) return life.exitCode;
    notifier.stopExtending();
    // What the kernel has, read once for the interface choice, the backend and the device setup (nothing of ours
    // changes it before the device setup).
    const kernel = readStartupKernel();
    const sel = await interfaceStep(f, kernel);
    const backend = await backendStep(cfg, sel, kernel);
    const held = await leaseStep(c, store, cfg, backend);
    if (!held) return life.exitCode;
    const { lease, keeper } = held;
    // Renewal runs from here on, also while the data plane waits for the kernel.
    const keeping = keepLease(keeper, life);

    dataPlane = new DataPlane({
      backend,
      lease,
      reconcileIntervalMs: f["reconcile-interval"],
      routeNexthops: f["route-nexthops"],
      startupKernel: kernel,
      readiness,
      signal: life.signal,
    });
    health.metrics = metricsOf(readiness, keeper, peers, dataPlane, () => rules?.stats?.() ?? null);
    if (!(await dataPlane.setUp())) return await finish(keeping, life);
    enableIPForward();

    rules = createTrafficRules({ config: cfg, lease, flags: f, subnetFile: f["subnet-file"], signal: life.signal });
    await rulesStep(rules, c);
    if (life.signal.aborted) return await finish(keeping, life);

    announceStep(c, cfg, lease, backend);
    readiness.waiting("initial peer sync");
    await follow({ store, config: cfg, lease, keeper, backend, dataPlane, peers, readiness, notifier, life, initial: held.initial });
    return await finish(keeping, life);
  } catch (e) {
    if (life.signal.aborted) return life.exitCode; // a step cut short by the stop, not a failure
    log.error((e as Error).message);
    return 1;
  } finally {
    life.release();
    notifier.close();
    rules?.stop();
    dataPlane?.close();
    await store?.close().catch(() => {});
    await server?.stop();
    log.info("exiting cleanly");
  }
}

/** The lease keeper until stopped (a record written over ours is a logged conflict it waits out: lease-protocol.ts). */
function keepLease(keeper: LeaseKeeper, life: Lifecycle): Promise<void> {
  return keeper.run(life.signal).then(() => {});
}

async function finish(keeping: Promise<void>, life: Lifecycle): Promise<number> {
  await keeping;
  return life.exitCode;
}

/** The rules step: installed before subnet.env; failures hold readiness back and are retried with backoff. */
async function rulesStep(rules: TrafficRules, c: StepContext): Promise<void> {
  const backoff = new Backoff();
  while (!c.signal.aborted) {
    try {
      await rules.install();
      c.readiness.clear("traffic rules");
      return;
    } catch (e) {
      c.readiness.block("traffic rules", `installing traffic rules failed: ${(e as Error).message}; retrying`);
      await sleep(backoff.next(), c.signal);
    }
  }
}

interface FollowDeps {
  store: Store;
  config: NetworkConfig;
  lease: Lease;
  keeper: LeaseKeeper;
  backend: Backend;
  dataPlane: DataPlane;
  peers: PeerSet;
  readiness: Readiness;
  notifier: Notifier;
  life: Lifecycle;
  /** The lease acquisition's list: the first peer sync takes it out of the box and starts from it. */
  initial: SnapshotBox;
}

/** The peer loop until stopped; start-up is done once the first sync is programmed. */
async function follow(d: FollowDeps): Promise<void> {
  const { lease, peers, readiness, life } = d;
  const ownKey = subnetKey(lease.subnet, lease.ipv6Subnet);
  const summary = () =>
    `lease ${formatCIDR(lease.subnet)}, ${peers.programmed} peers${peers.ignored.size ? `, ${peers.ignored.size} ignored` : ""}`;
  try {
    await runPeerLoop(
      watchPeers(d.store, () => ownKey, life.signal, { config: d.config, own: () => d.keeper.lease }, { initial: d.initial }),
      {
        backend: d.backend,
        target: d.dataPlane.reconciler,
        onOwn: (l) => d.keeper.notice(l),
        onChange: () => readiness.setSummary(summary()),
        beforeFirstSync: () => collectStartupGarbage(peers.programmed),
        onFirstSync: (r) => {
          d.dataPlane.watch();
          readiness.started(summary());
          // WATCHDOG=1 only while healthy: the event loop turns (the timer fires), the agent is not stopping and
          // every liveness check registered with readiness (e.g. the store watch) passes.
          d.notifier.startWatchdog(() => !life.signal.aborted && readiness.alive());
          log.success(
            `${readiness.ready ? "ready" : "started (not ready)"}: ${peers.programmed} peers programmed${peers.ignored.size ? `, ${peers.ignored.size} ignored` : ""}; ` +
              `kernel in sync (added ${r.added}, repaired ${r.repaired}, removed ${r.removed} stale)`,
          );
        },
      },
      peers,
    );
  } catch (e) {
    if (life.signal.aborted) return;
    log.error(`peer watch failed: ${(e as Error).message}`);
    life.stop(1);
  }
}

function metricsOf(
  readiness: Readiness,
  keeper: LeaseKeeper,
  peers: PeerSet,
  dp: DataPlane,
  rules: () => { repaired: number; failures: number } | null,
) {
  return () =>
    renderMetrics({
      ready: () => readiness.ready,
      leaseExpiresAt: () => keeper.lease.expiresAt,
      peers: () => peers.programmed,
      ignoredPeers: () => peers.ignored.size,
      leaseRenewals: () => keeper.renewals,
      storeErrors: () => storeHealth.errors,
      queue: () => dp.queue.stats(),
      reconcile: () => dp.reconciler.totals,
      rules,
    });
}
