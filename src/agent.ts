// The agent: `flannel-bin run`. Takes and keeps a lease, writes subnet.env, and turns peer leases into kernel state.
// Data flows one way: store watch -> peer events -> backend -> desired state -> reconciler -> command queue -> kernel.

import { writeFileSync, readFileSync } from "node:fs";
import { logger } from "./log.ts";
import { createBackend } from "../backends/index.ts";
import type { Backend } from "../backends/backend.ts";
import { ConfigError, DEFAULT_CONFIG_EXAMPLE, type NetworkConfig, formatNetworkConfigSummary, parseNetworkConfig } from "./config.ts";
import type { FlagValue } from "./flags.ts";
import { serveHealth, type HealthState } from "./health.ts";
import { renderMetrics } from "./metrics.ts";
import { chooseExternalInterface } from "./iface.ts";
import { formatCIDR } from "./ipmath.ts";
import { CommandQueue } from "./kernel/queue.ts";
import { Reconciler } from "./kernel/reconciler.ts";
import { ROUTE_PROTO } from "./kernel/types.ts";
import { type Lease, subnetKey } from "./lease.ts";
import { LeaseKeeper, acquireLease } from "./lease-protocol.ts";
import { watchPeers } from "./peer-watch.ts";
import { CONFIG_KEY, type Store, StoreUnavailableError } from "./store.ts";
import { configPutHint, openStore } from "./store-open.ts";
import { sleep } from "./sleep.ts";
import { notifierFromEnv } from "./systemd-notify.ts";
import { readPreviousSubnet, writeSubnetEnv } from "./subnet-env.ts";

const log = logger("agent");

class FatalError extends Error {}
const settingsAreFatal = (e: unknown): never => {
  if (e instanceof StoreUnavailableError) throw e;
  throw new FatalError(`cannot use the store: ${(e as Error).message}`);
};

/** Repeats `attempt` every second until it returns a value, logging each distinct failure once; FatalError ends it. */
async function retryEverySecond<T>(
  what: string,
  signal: AbortSignal,
  attempt: () => Promise<T | null>,
  onError?: () => void,
): Promise<T | null> {
  let last = "";
  while (!signal.aborted) {
    try {
      const v = await attempt();
      if (v !== null) return v;
    } catch (e) {
      if (e instanceof FatalError) throw e;
      onError?.();
      const msg = (e as Error).message;
      if (msg !== last) log.error(`${what}: ${msg} (retrying every second)`);
      last = msg;
    }
    await sleep(1000, signal);
  }
  return null;
}

async function waitForConfig(
  store: Store,
  f: Record<string, FlagValue>,
  signal: AbortSignal,
  onError: () => void,
): Promise<NetworkConfig | null> {
  let told = false;
  return retryEverySecond(
    "network config",
    signal,
    async () => {
      const kv = await store.get(CONFIG_KEY);
      if (!kv) {
        if (!told)
          log.warn(
            `network config not found in the ${store.kind} store (${store.location}); create it with:\n  ${configPutHint(f, DEFAULT_CONFIG_EXAMPLE)}\nretrying every second`,
          );
        told = true;
        return null;
      }
      try {
        return parseNetworkConfig(new TextDecoder().decode(kv.value));
      } catch (e) {
        if (e instanceof ConfigError) throw new Error(`invalid network config in the ${store.kind} store: ${e.message}`);
        throw e;
      }
    },
    onError,
  );
}

function enableIPForward(): void {
  const p = "/proc/sys/net/ipv4/ip_forward";
  try {
    if (readFileSync(p, "utf8").trim() !== "1") {
      writeFileSync(p, "1");
      log.info("net.ipv4.ip_forward was off; turned it on");
    }
  } catch (e) {
    log.warn(`could not turn on net.ipv4.ip_forward: ${(e as Error).message}`);
  }
}

export async function runAgent(f: Record<string, FlagValue>): Promise<number> {
  // Read (and removed from the environment, so ip/bridge/iptables never inherit it) before anything is spawned.
  const notifier = notifierFromEnv();
  const ac = new AbortController();
  const { signal } = ac;
  let exitCode = 0;
  const stop = (code: number) => {
    exitCode = code;
    ac.abort();
  };
  const onSignal = (sig: string) => {
    notifier.stopping(`stopping on ${sig}`);
    log.info(`${sig} received; stopping (lease, subnet.env and kernel state are kept)`);
    process.off("SIGINT", onSig);
    process.off("SIGTERM", onTerm); // a second signal kills at once, as flanneld
    stop(0);
  };
  const onSig = () => onSignal("SIGINT");
  const onTerm = () => onSignal("SIGTERM");
  process.on("SIGINT", onSig);
  process.on("SIGTERM", onTerm);

  const health: HealthState = { ready: false, waitingFor: "connecting to the store" };
  const waiting = (what: string, status = `waiting for ${what}`) => {
    health.waitingFor = what;
    notifier.status(status);
  };
  waiting("connecting to the store", "waiting for the store");
  const stats = { peers: new Set<string>(), ignored: new Set<string>(), storeErrors: 0 };
  const port = Number(f["healthz-port"]);
  const server = port > 0 ? serveHealth(health, String(f["healthz-ip"]), port) : null;
  if (server) log.info(`health API on http://${f["healthz-ip"]}:${server.port} (/healthz, /readyz, /metrics)`);

  const ttlMs = Number(f["subnet-lease-ttl"]);
  const marginMs = Number(f["subnet-lease-renew-margin"]) * 60_000;
  const subnetFile = String(f["subnet-file"]);

  let store: Store | null = null;
  let reconciler: Reconciler | null = null;
  let queue: CommandQueue | null = null;
  try {
    const storeError = () => void stats.storeErrors++;
    // An unreachable store is waited for; settings that can never work (a lone certfile, an unreadable CA file,
    // a bad path) end the agent with their message instead of being retried forever.
    notifier.keepExtending();
    store = await retryEverySecond(`${f.store} store`, signal, () => openStore(f).catch(settingsAreFatal), storeError);
    if (!store) return exitCode;
    log.info(`using the ${store.kind} store at ${store.location}`);

    waiting("network config");
    const cfg = await waitForConfig(store, f, signal, storeError);
    if (!cfg) return exitCode;
    notifier.stopExtending();
    log.info(`network config: ${formatNetworkConfigSummary(cfg)}`);

    const { iface, publicIP, notes } = await chooseExternalInterface({
      iface: f.iface as string[] | undefined,
      ifaceRegex: f["iface-regex"] as string[] | undefined,
      publicIP: (f["public-ip"] as string | undefined) || undefined,
    });
    for (const n of notes) log.info(n);
    log.info(`using interface ${iface.name} (mtu ${iface.mtu}) with public IP ${publicIP}`);
    const backend: Backend = createBackend({ config: cfg, extIface: iface, publicIP });

    waiting("lease");
    const prev = readPreviousSubnet(subnetFile);
    const lease: Lease | null = await retryEverySecond(
      "acquiring a lease",
      signal,
      () => acquireLease(store!, cfg, backend.leaseAttrs(), { previousSubnet: prev.subnet, ttlMs }),
      storeError,
    );
    if (!lease) return exitCode;
    const ownKey = subnetKey(lease.subnet, lease.ipv6Subnet);
    log.info(`holding lease ${formatCIDR(lease.subnet)}${lease.expiresAt === null ? " (reserved)" : ""}`);

    // Renewal and re-creation of our lease have one owner; watch events about our own record only wake it.
    const keeper = new LeaseKeeper(store, lease, { ttlMs, marginMs, onError: storeError });

    queue = new CommandQueue();
    reconciler = new Reconciler(queue, {
      ownedDevices: backend.ownedDevices,
      routeProto: ROUTE_PROTO,
      fullIntervalMs: Number(f["reconcile-interval"]),
    });
    health.metrics = () =>
      renderMetrics({
        ready: () => health.ready,
        leaseExpiresAt: () => keeper.lease.expiresAt,
        peers: () => stats.peers.size,
        ignoredPeers: () => stats.ignored.size,
        leaseRenewals: () => keeper.renewals,
        storeErrors: () => stats.storeErrors,
        queue: () => queue?.stats() ?? null,
        reconcile: () => reconciler?.totals ?? null,
      });
    reconciler.set("local", backend.localState(lease));
    await reconciler.flush();
    enableIPForward();
    // As flanneld: a subnet.env that cannot be written is an error in the log and keeps /readyz at 503, but the
    // data plane keeps working.
    let subnetEnvWritten = false;
    try {
      writeSubnetEnv(subnetFile, { network: cfg.network, subnet: lease.subnet, mtu: backend.mtu, ipMasq: f["ip-masq"] === true });
      subnetEnvWritten = true;
      log.info(`wrote ${subnetFile}`);
    } catch (e) {
      log.error(`could not write ${subnetFile}: ${(e as Error).message}`);
    }
    if (subnetEnvWritten) waiting("initial peer sync");
    else waiting(`writing ${subnetFile} failed`, `not ready: writing ${subnetFile} failed`);

    const keepLease = async () => {
      if ((await keeper.run(signal)) === "taken") {
        log.error(
          `lease ${formatCIDR(lease.subnet)} is now held by another host; exiting so that a restart takes a new subnet (kernel state is kept)`,
        );
        stop(1);
      }
    };

    // A peer whose state cannot be used is ignored (logged once) and whatever we had programmed for it removed.
    const ignorePeer = (key: string, why: string) => {
      if (!stats.ignored.has(key)) log.warn(`ignoring peer ${key}: ${why}`);
      stats.ignored.add(key);
      stats.peers.delete(key);
      reconciler!.delete(`peer:${key}`);
    };
    const peers = async () => {
      let synced = false;
      for await (const ev of watchPeers(store!, () => ownKey, signal)) {
        switch (ev.type) {
          case "added": {
            const ps = backend.peerState(ev.lease);
            if ("ignored" in ps) {
              ignorePeer(ev.key, ps.ignored);
              break;
            }
            try {
              reconciler!.set(`peer:${ev.key}`, ps.state);
            } catch (e) {
              ignorePeer(ev.key, (e as Error).message); // the kernel layer's validation is the last line of defence
              break;
            }
            stats.ignored.delete(ev.key);
            stats.peers.add(ev.key);
            log.info(`peer ${formatCIDR(ev.lease.subnet)} at ${ev.lease.attrs.publicIP} added`);
            break;
          }
          case "removed":
            log.info(`peer ${formatCIDR(ev.lease.subnet)} at ${ev.lease.attrs.publicIP} removed`);
            stats.peers.delete(ev.key);
            stats.ignored.delete(ev.key);
            reconciler!.delete(`peer:${ev.key}`);
            break;
          case "own":
            keeper.notice(ev.lease);
            break;
          case "synced":
            if (!synced) {
              synced = true;
              // The first full reconcile also removes what we own for peers that left while we were down.
              const r = await reconciler!.fullReconcile();
              reconciler!.start();
              health.ready = subnetEnvWritten;
              if (subnetEnvWritten) health.waitingFor = "";
              if (subnetEnvWritten) {
                notifier.ready(`ready: lease ${formatCIDR(lease.subnet)}, ${stats.peers.size} peers`);
                notifier.startWatchdog(() => !signal.aborted);
              }
              log.success(
                `ready: ${stats.peers.size} peers programmed${stats.ignored.size ? `, ${stats.ignored.size} ignored` : ""}; ` +
                  `kernel in sync (added ${r.added}, repaired ${r.repaired}, removed ${r.removed} stale)`,
              );
            }
            break;
        }
      }
    };

    await Promise.all([
      keepLease(),
      peers().catch((e) => {
        log.error(`peer watch failed: ${(e as Error).message}`);
        stop(1);
      }),
    ]);
    return exitCode;
  } catch (e) {
    log.error((e as Error).message);
    return 1;
  } finally {
    process.off("SIGINT", onSig);
    process.off("SIGTERM", onTerm);
    notifier.close();
    reconciler?.stop();
    queue?.close();
    await store?.close().catch(() => {});
    await server?.stop();
    log.info("exiting cleanly");
  }
}
