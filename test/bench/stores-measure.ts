// Measurements for the store benchmark (test/bench/stores.ts). Runs inside the benchmark's network namespace:
// the store servers, the agent and this writer share its loopback, and routes land in its table only.
//
//   measureAcquisitions  N store clients call acquireLease at once (distinct public IPs); time until all hold one,
//                        duplicates among the returned subnets and in a final list().
//   measureRouteDelay    a real agent (dist/flannel-bin run) on the store; peer leases written one at a time; the
//                        delay from the start of each create() to the moment `ip monitor route` shows its route.
//                        A watcher of our own on a second client records when the store delivered each event, so
//                        store delay and agent delay can be told apart.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { parseNetworkConfig } from "../../src/config.ts";
import { type IPNet, formatCIDR, overlaps, parseCIDR } from "../../src/ipmath.ts";
import { type Lease, encodeLeaseAttrs, parseSubnetKey, subnetKey } from "../../src/lease.ts";
import { acquireLease, listLeases } from "../../src/lease-protocol.ts";
import { CONFIG_KEY, type Store, SUBNETS_PREFIX } from "../../src/store.ts";

export interface AcquireResult {
  clients: number;
  ms: number;
  held: number;
  failed: number;
  /** Subnets handed to more than one client, plus overlapping keys in the final list. */
  duplicates: number;
  /** Leases in the final list that no client got back (or vice versa): should be 0. */
  listMismatches: number;
  firstError: string | null;
  /** create() calls over all clients (held + lost races), and the most one client needed. */
  creates: number;
  maxCreates: number;
  /** One list() of all the leases afterwards, by a single idle client (median of 3): the cost of each attempt's look. */
  listMs: number;
}

/** The same store, counting create() calls: each lost create race is one more. */
function countingCreates(s: Store, count: { n: number }): Store {
  return new Proxy(s, {
    get(target, prop) {
      const v: unknown = Reflect.get(target, prop, target);
      if (typeof v !== "function") return v;
      if (prop === "create") return (...a: Parameters<Store["create"]>) => (count.n++, target.create(...a));
      return (v as (...x: unknown[]) => unknown).bind(target);
    },
  });
}

const ACQUIRE_CONFIG = '{"Network":"10.64.0.0/14","SubnetLen":24,"Backend":{"Type":"host-gw"}}';
const ACQUIRE_TIMEOUT_MS = 30_000;

/** 198.18.0.0/15 (benchmarking range): client i -> 198.18.<i/250>.<1 + i%250>. */
const acquirePublicIP = (i: number) => `198.18.${Math.floor(i / 250)}.${1 + (i % 250)}`;

function timeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: ReturnType<typeof setTimeout> | undefined;
  const giveUp = new Promise<never>((_, reject) => (t = setTimeout(() => reject(new Error(`${what}: no answer after ${ms} ms`)), ms)));
  return Promise.race([p, giveUp]).finally(() => clearTimeout(t));
}

/**
 * `clients` are opened beforehand (not timed); each calls acquireLease once, all started in the same tick.
 * `control` is one more client, used for the final list().
 */
export async function measureAcquisitions(clients: Store[], control: Store): Promise<AcquireResult> {
  const cfg = parseNetworkConfig(ACQUIRE_CONFIG);
  const results: (Lease | Error)[] = new Array(clients.length);
  const counts = clients.map(() => ({ n: 0 }));
  const counted = clients.map((s, i) => countingCreates(s, counts[i]!));
  const t0 = performance.now();
  await timeout(
    Promise.all(
      counted.map((s, i) =>
        acquireLease(
          s,
          cfg,
          { publicIP: acquirePublicIP(i), publicIPv6: null, backendType: "host-gw" },
          { previousSubnet: null, ttlMs: 600_000 },
        ).then(
          (l) => void (results[i] = l),
          (e: unknown) => void (results[i] = e instanceof Error ? e : new Error(String(e))),
        ),
      ),
    ),
    ACQUIRE_TIMEOUT_MS,
    `${clients.length} concurrent acquisitions`,
  );
  const ms = performance.now() - t0;

  const leases = results.filter((r): r is Lease => !(r instanceof Error));
  const errors = results.filter((r): r is Error => r instanceof Error);
  let duplicates = 0;
  const bySubnet = new Map<string, string>();
  for (const l of leases) {
    const k = formatCIDR(l.subnet);
    if (bySubnet.has(k)) duplicates++;
    else bySubnet.set(k, l.attrs.publicIP);
  }

  // The store's own view: every client's lease present under its public IP, no two records overlapping.
  const snap = await listLeases(control);
  const listed = snap.leases;
  for (let i = 0; i < listed.length; i++) {
    for (let j = i + 1; j < listed.length; j++) if (overlaps(listed[i]!.subnet, listed[j]!.subnet)) duplicates++;
  }
  let listMismatches = Math.abs(listed.length - leases.length) + snap.corrupt.length;
  const listedByIP = new Map<string, IPNet[]>();
  for (const l of listed) listedByIP.set(l.attrs.publicIP, [...(listedByIP.get(l.attrs.publicIP) ?? []), l.subnet]);
  for (const l of leases) {
    const got = listedByIP.get(l.attrs.publicIP) ?? [];
    if (got.length !== 1 || formatCIDR(got[0]!) !== formatCIDR(l.subnet)) listMismatches++;
    if (got.length > 1) duplicates += got.length - 1; // one host on two subnets
  }
  const listTimes: number[] = [];
  for (let i = 0; i < 3; i++) {
    const t = performance.now();
    await control.list(SUBNETS_PREFIX);
    listTimes.push(performance.now() - t);
  }
  return {
    listMs: listTimes.sort((a, b) => a - b)[1]!,
    clients: clients.length,
    ms,
    held: leases.length,
    failed: errors.length,
    duplicates,
    listMismatches,
    firstError: errors[0]?.message ?? null,
    creates: counts.reduce((a, c) => a + c.n, 0),
    maxCreates: Math.max(...counts.map((c) => c.n)),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Route programming delay

export interface DelayStats {
  n: number;
  missing: number;
  p50: number;
  p99: number;
  max: number;
}

export interface RouteDelayResult {
  /** create() start -> route in `ip monitor route`. */
  route: DelayStats;
  /** create() start -> put event on a second client's watch (the store's share of the delay). */
  watch: DelayStats;
  /** create() call duration (the write itself). */
  write: DelayStats;
  /** The slowest events: index, ms since the first write, route delay, watch delay. */
  worst: { i: number; at: number; route: number | undefined; watch: number | undefined }[];
  agentLog: string;
}

// SubnetMax keeps the agent's own (random) pick out of the peers' 10.66.0.0/16 and the warm-up's 10.67.0.0/24.
export const ROUTE_CONFIG = '{"Network":"10.64.0.0/14","SubnetMax":"10.65.255.0","Backend":{"Type":"host-gw"}}';

/** Nearest-rank percentile over sorted values. */
function pct(sorted: number[], p: number): number {
  if (!sorted.length) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

export function stats(values: (number | undefined)[]): DelayStats {
  const v = values.filter((x): x is number => x !== undefined).sort((a, b) => a - b);
  return {
    n: v.length,
    missing: values.length - v.length,
    p50: pct(v, 50),
    p99: pct(v, 99),
    max: v.length ? v[v.length - 1]! : Number.NaN,
  };
}

/** Timestamps routes as `ip monitor route` reports them, read line by line in this process (our clock). */
class RouteMonitor {
  private readonly proc: Subprocess<"ignore", "pipe", "ignore">;
  /** "10.66.3.0/24 via 192.0.2.5" -> performance.now() of the first line showing it. */
  readonly seen = new Map<string, number>();
  private readonly waiters = new Map<string, () => void>();
  private readonly done: Promise<void>;

  constructor() {
    this.proc = Bun.spawn(["ip", "monitor", "route"], { stdin: "ignore", stdout: "pipe", stderr: "ignore" });
    this.done = this.read();
  }

  private async read(): Promise<void> {
    const dec = new TextDecoder();
    let buf = "";
    // Our routes: "<dst> [nhid N] via <gw> dev eth0 proto 159 ..." (nhid: through a nexthop object, where the kernel
    // has them); "Deleted ..." lines are removals.
    const re = /^(\d+\.\d+\.\d+\.\d+\/\d+) (?:nhid \d+ )?via (\S+) dev eth0 .*\bproto 159\b/;
    for await (const chunk of this.proc.stdout) {
      const now = performance.now();
      buf += dec.decode(chunk, { stream: true });
      const lines = buf.split("\n");
      buf = lines.pop() ?? "";
      for (const line of lines) {
        const m = re.exec(line);
        if (!m) continue;
        const k = `${m[1]} via ${m[2]}`;
        if (!this.seen.has(k)) this.seen.set(k, now);
        this.waiters.get(k)?.();
      }
    }
  }

  /** Resolves true when the route shows up, false after `ms`. */
  async waitFor(k: string, ms: number): Promise<boolean> {
    if (this.seen.has(k)) return true;
    let t: ReturnType<typeof setTimeout> | undefined;
    const ok = await new Promise<boolean>((resolve) => {
      this.waiters.set(k, () => resolve(true));
      t = setTimeout(() => resolve(false), ms);
    });
    clearTimeout(t);
    this.waiters.delete(k);
    return ok;
  }

  async stop(): Promise<void> {
    this.proc.kill("SIGTERM");
    await timeout(this.proc.exited, 5_000, "ip monitor exit").catch(() => this.proc.kill("SIGKILL"));
    await this.done.catch(() => {});
  }
}

export interface RouteDelayOptions {
  /** The benchmark's throw-away dir: subnet.env and agent log go here. */
  dir: string;
  binary: string;
  /** `run` flags that select the store, e.g. ["--store", "etcd", "--etcd-endpoints", url]. */
  storeFlags: string[];
  /**
   * Names this run's subnet.env and log (default: the store kind). Two runs on one store kind need their own: a
   * subnet.env left by the first would read as the second agent's lease before it has one.
   */
  label?: string;
  /** Writes the peer leases and the config. */
  writer: Store;
  /** A second client, only for watching (its own connection, or its own SQLite handle so it polls as the agent). */
  watcher: Store;
  peers: number;
  spacingMs: number;
}

const AGENT_READY_MS = 20_000;
const ROUTE_WAIT_MS = 10_000;

/** Peer i (0-based) -> PublicIP 192.0.2.(i+2) (on-link on eth0; .1 is the agent, .254 the gateway), subnet 10.66.<i>.0/24. */
const peerIP = (i: number) => `192.0.2.${i + 2}`;
const peerSubnet = (i: number): IPNet => ({ family: 4, ip: parseCIDR("10.66.0.0/24").ip + BigInt(i) * 256n, prefix: 24 });

export async function measureRouteDelay(o: RouteDelayOptions): Promise<RouteDelayResult> {
  if (o.peers > 200) throw new Error("at most 200 peers: 192.0.2.2-201 are peers, .202 the warm-up, .254 the gateway");
  const enc = new TextEncoder();
  if ((await o.writer.create(CONFIG_KEY, enc.encode(ROUTE_CONFIG))) === null) throw new Error("config already present in a fresh store");

  const label = o.label ?? o.storeFlags[1];
  const subnetFile = join(o.dir, `${label}-subnet.env`);
  const logFile = join(o.dir, `${label}-agent.log`);
  const agent = Bun.spawn(
    [o.binary, "run", ...o.storeFlags, "--iface", "eth0", "--healthz-port", "0", "--subnet-file", subnetFile, "--subnet-lease-ttl", "30s"],
    { stdin: "ignore", stdout: Bun.file(logFile), stderr: Bun.file(logFile) },
  );
  const readLog = () => (existsSync(logFile) ? readFileSync(logFile, "utf8") : "");
  const monitor = new RouteMonitor();
  const watchAbort = new AbortController();
  let watchLoop: Promise<void> = Promise.resolve();
  try {
    // 1. The agent holds a lease and wrote subnet.env.
    const deadline = Date.now() + AGENT_READY_MS;
    while (!existsSync(subnetFile) && Date.now() < deadline && agent.exitCode === null) await Bun.sleep(50);
    if (!existsSync(subnetFile))
      throw new Error(
        `agent did not write ${subnetFile} within ${AGENT_READY_MS} ms (exit ${agent.exitCode}); log:\n${readLog().slice(-3000)}`,
      );
    const own = /^FLANNEL_SUBNET=(\S+)/m.exec(readFileSync(subnetFile, "utf8"))?.[1] ?? "";
    const ownNet = parseSubnetKey(own.replace(/\.1\/(\d+)$/, ".0-$1"));

    // 2. Our own watcher, from the store's current revision.
    const start = await o.watcher.list(SUBNETS_PREFIX);
    const watchSeen = new Map<string, number>();
    watchLoop = (async () => {
      for await (const ev of o.watcher.watch(SUBNETS_PREFIX, start.revision, watchAbort.signal)) {
        if (ev.type === "put" && !watchSeen.has(ev.kv.key)) watchSeen.set(ev.kv.key, performance.now());
      }
    })().catch(() => {});

    const peers = Array.from({ length: o.peers }, (_, i) => ({ ip: peerIP(i), subnet: peerSubnet(i) }));
    if (ownNet && peers.some((p) => overlaps(p.subnet, ownNet.subnet)))
      throw new Error(`agent subnet ${own} overlaps the peer range 10.66.0.0/16`);
    const put = (ip: string, subnet: IPNet) =>
      o.writer.create(subnetKey(subnet), encodeLeaseAttrs({ publicIP: ip, publicIPv6: null, backendType: "host-gw" }), { ttlMs: 600_000 });

    // 3. Warm-up peer: proves the agent's peer watch and the monitor are both live before we time anything.
    const warm = { ip: "192.0.2.202", subnet: parseCIDR("10.67.0.0/24") };
    await put(warm.ip, warm.subnet);
    if (!(await monitor.waitFor(`${formatCIDR(warm.subnet)} via ${warm.ip}`, AGENT_READY_MS))) {
      throw new Error(`warm-up route ${formatCIDR(warm.subnet)} never appeared; agent log:\n${readLog().slice(-3000)}`);
    }

    // 4. The timed peers, one at a time, spaced.
    const started: number[] = [];
    const wrote: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < peers.length; i++) {
      const due = t0 + i * o.spacingMs;
      const wait = due - performance.now();
      if (wait > 0) await Bun.sleep(wait);
      started[i] = performance.now();
      if ((await put(peers[i]!.ip, peers[i]!.subnet)) === null) throw new Error(`peer key ${subnetKey(peers[i]!.subnet)} already existed`);
      wrote[i] = performance.now() - started[i]!;
    }
    const last = peers[peers.length - 1]!;
    await monitor.waitFor(`${formatCIDR(last.subnet)} via ${last.ip}`, ROUTE_WAIT_MS);
    // Anything still missing gets a final bounded grace period.
    const graceEnd = Date.now() + 2_000;
    while (Date.now() < graceEnd && peers.some((p) => !monitor.seen.has(`${formatCIDR(p.subnet)} via ${p.ip}`))) await Bun.sleep(50);

    const route = peers.map((p, i) => {
      const t = monitor.seen.get(`${formatCIDR(p.subnet)} via ${p.ip}`);
      return t === undefined ? undefined : t - started[i]!;
    });
    const watch = peers.map((p, i) => {
      const t = watchSeen.get(subnetKey(p.subnet));
      return t === undefined ? undefined : t - started[i]!;
    });
    const worst = peers
      .map((_, i) => ({ i, route: route[i], watch: watch[i], at: started[i]! - t0 }))
      .sort((a, b) => (b.route ?? Infinity) - (a.route ?? Infinity))
      .slice(0, 5);
    return { route: stats(route), watch: stats(watch), write: stats(wrote), worst, agentLog: readLog() };
  } finally {
    watchAbort.abort();
    agent.kill("SIGTERM");
    await timeout(agent.exited, 10_000, "agent exit").catch(() => agent.kill("SIGKILL"));
    await monitor.stop();
    await timeout(watchLoop, 5_000, "watch loop end").catch(() => {});
  }
}
