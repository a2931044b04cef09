// Scale benchmark (issue 13.6): `bun test/bench/scale.ts [--peers N] [--idle S] [--stores sqlite,etcd,nats,nats-2.9]` as root.
// With --storm [--hosts N] [--keep-lab]: the join storm instead (N agents started at once on one underlay; storm.ts).
//
// Per store, side by side in one run: the store is seeded with N valid vxlan peer leases through its own client
// (default N = 10,000), then one agent (dist/flannel-bin run, vxlan) starts on it and we measure
//   exec -> ready      from spawning the agent to /readyz answering 200 (every peer programmed);
//   RssAnon            of the agent at ready and after the idle period;
//   new peer           lease written -> its route in `ip monitor route` (median and max of 5, one at a time);
//   idle               CPU (per thread from schedstat, ns precision, plus waited-for children) and processes started (iproute2 and iptables/nft: the agent's own
//                      /metrics count) over S seconds (default 60) after ready.
// The floor is one `ip -batch` + `bridge -batch` of the same N neighbour, fdb and route lines; the "before" column
// holds the figures the issue measured on the earlier build. Goals are printed, not asserted.
// Everything runs in a namespace of its own (bench-netns.ts); kernel state is removed between stores.
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { consola } from "../../src/log.ts";
import { encodeLeaseAttrs, subnetKey } from "../../src/lease.ts";
import { CONFIG_KEY, type Store } from "../../src/store.ts";
import { EtcdStore } from "../../stores/etcd/store.ts";
import { NatsStore } from "../../stores/nats/store.ts";
import { SqliteStore } from "../../stores/sqlite.ts";
import { startEtcdServer } from "../harness/etcd-server.ts";
import { startNatsServer } from "../harness/nats-server.ts";
import { ensureBinary } from "../helpers/agents.ts";
import { peerBinary } from "../helpers/peers.ts";
import { MAX_HOSTS } from "../../src/lab/state.ts";
import { runInBenchNamespace } from "./bench-netns.ts";
import { cpuBetween, cpuReading } from "./proc-cpu.ts";
import { runStorm } from "./storm.ts";

// NATS twice, as in stores.ts: "nats" on the current nats-server scripts/setup.sh builds (server TTLs, lists in one
// batched direct get), "nats-2.9" on Debian's 2.9.10 (expiry kept in the value, lists through a consumer).
type Kind = "sqlite" | "etcd" | "nats" | "nats-2.9";
const ALL: Kind[] = ["sqlite", "etcd", "nats", "nats-2.9"];
const CONFIG = '{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}';
const READY_TIMEOUT_MS = 180_000;
const NEW_PEERS = 5;
const PORT = 8471;
/** The issue's measurements of the earlier build (10k leases, 2-core machine). */
const BEFORE: Record<Kind, { ready: string; rss: string; idle: string }> = {
  sqlite: { ready: "11.1-12.7 s", rss: "90 MB", idle: "~5 % of a core (full reconcile every 10 s), 36 processes/min" },
  etcd: { ready: "20.1-22.5 s", rss: "148-165 MB (RSS)", idle: "same" },
  nats: { ready: "13.7-17.3 s", rss: "~130 MB", idle: "same" },
  "nats-2.9": { ready: "13.7-17.3 s", rss: "~130 MB", idle: "same" },
};

interface Options {
  peers: number;
  idleS: number;
  kinds: Kind[];
  /** --storm: the join storm (storm.ts) instead of the single-agent run. */
  storm: boolean;
  hosts: number;
  /** --keep-lab: the storm leaves its labs up (to read the agents' logs). */
  keepLab: boolean;
}

function parseArgs(a: string[]): Options {
  const o: Options = { peers: 10_000, idleS: 60, kinds: ALL, storm: false, hosts: 50, keepLab: false };
  for (let i = 0; i < a.length; i++) {
    const v = a[i + 1];
    if (a[i] === "--peers" && v) (o.peers = Number(v)), i++;
    else if (a[i] === "--idle" && v) (o.idleS = Number(v)), i++;
    else if (a[i] === "--stores" && v) (o.kinds = v.split(",") as Kind[]), i++;
    else if (a[i] === "--storm") o.storm = true;
    else if (a[i] === "--hosts" && v) (o.hosts = Number(v)), i++;
    else if (a[i] === "--keep-lab") o.keepLab = true;
    else
      throw new Error(
        `unknown argument ${JSON.stringify(a[i])} (use --peers N, --idle S, --stores sqlite,etcd,nats,nats-2.9, --storm [--hosts N] [--keep-lab])`,
      );
  }
  if (!Number.isInteger(o.peers) || o.peers < 1 || o.peers > 60_000) throw new Error("--peers must be 1..60000");
  if (!Number.isFinite(o.idleS) || o.idleS < 1 || o.idleS > 600) throw new Error("--idle must be 1..600 seconds");
  if (!Number.isInteger(o.hosts) || o.hosts < 2 || o.hosts > MAX_HOSTS) throw new Error(`--hosts must be 2..${MAX_HOSTS}`);
  for (const k of o.kinds) if (!ALL.includes(k)) throw new Error(`unknown store ${JSON.stringify(k)}`);
  return o;
}

// Peer i: subnet 10.(1 + i/256).(i%256).0/24, PublicIP 172.16.0.0 + i + 1, VtepMAC 0e:00:00:<i as 3 bytes>.
const peerSubnet = (i: number) => `10.${1 + (i >> 8)}.${i & 255}.0`;
const peerIP = (i: number) => {
  const n = i + 1;
  return `172.${16 + (n >> 16)}.${(n >> 8) & 255}.${n & 255}`;
};
const hex = (n: number) => (n & 255).toString(16).padStart(2, "0");
const peerMac = (i: number) => `0e:00:00:${hex(i >> 16)}:${hex(i >> 8)}:${hex(i)}`;

function peerValue(i: number): Uint8Array {
  return encodeLeaseAttrs({
    publicIP: peerIP(i),
    publicIPv6: null,
    backendType: "vxlan",
    backendData: { VNI: 1, VtepMAC: peerMac(i) },
  });
}

interface Harness {
  flags: string[];
  open(): Promise<Store>;
  stop(): Promise<void>;
}

async function harness(kind: Kind, dir: string): Promise<Harness> {
  switch (kind) {
    case "sqlite": {
      const path = join(dir, "scale.db");
      return { flags: ["--store", "sqlite", "--sqlite-path", path], open: async () => SqliteStore.open(path), stop: async () => {} };
    }
    case "etcd": {
      const srv = await startEtcdServer();
      return {
        flags: ["--store", "etcd", "--etcd-endpoints", srv.endpoint],
        open: () => EtcdStore.connect({ endpoints: [srv.endpoint], prefix: "/coreos.com/network" }),
        stop: () => srv.stop(),
      };
    }
    case "nats":
    case "nats-2.9": {
      const srv = await startNatsServer(kind === "nats" ? { natsServerPath: peerBinary("nats-server") } : {});
      return {
        flags: ["--store", "nats", "--nats-url", srv.url],
        open: () => NatsStore.connect({ servers: [srv.url], bucket: "flannel" }),
        stop: () => srv.stop(),
      };
    }
  }
}

/** Writes the config and leases [from, to) through the store's own client, 100 at a time. */
async function seed(s: Store, from: number, to: number): Promise<void> {
  const k = (i: number) => subnetKey({ family: 4, ip: BigInt(0x0a000000 + (1 << 16) + i * 256), prefix: 24 });
  for (let i = from; i < to; i += 100) {
    const batch = [];
    for (let j = i; j < Math.min(to, i + 100); j++) batch.push(s.create(k(j), peerValue(j), { ttlMs: 3_600_000 }));
    for (const r of await Promise.all(batch)) if (r === null) throw new Error("a seeded key already existed");
  }
}

function procStatus(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : Number.NaN;
}

async function metric(name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${PORT}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ")[1]) : Number.NaN;
}

/** Resolves with performance.now() when `ip monitor route` first shows a route to `dst`. */
function routeWatcher() {
  const proc = Bun.spawn(["ip", "-o", "monitor", "route"], { stdin: "ignore", stdout: "pipe", stderr: "ignore" });
  const seen = new Map<string, number>();
  const waiters = new Map<string, (t: number) => void>();
  (async () => {
    const dec = new TextDecoder();
    let buf = "";
    for await (const chunk of proc.stdout) {
      const now = performance.now();
      buf += dec.decode(chunk, { stream: true });
      const lines = buf.split("\n");
      buf = lines.pop() ?? "";
      for (const l of lines) {
        const dst = /^(\d+\.\d+\.\d+\.\d+\/\d+) /.exec(l)?.[1];
        if (!dst || seen.has(dst)) continue;
        seen.set(dst, now);
        waiters.get(dst)?.(now);
      }
    }
  })().catch(() => {});
  return {
    wait: (dst: string, ms: number) =>
      new Promise<number | undefined>((resolve) => {
        const t = setTimeout(() => resolve(undefined), ms);
        waiters.set(dst, (now) => (clearTimeout(t), resolve(now)));
      }),
    stop: () => proc.kill("SIGTERM"),
  };
}

interface Row {
  kind: Kind;
  seedS: number;
  readyS: number;
  rssReady: number;
  rssLater: number;
  newPeerMs: number[];
  idleCpuS: number;
  /** The idle CPU by thread name (what wakes an idle agent). */
  idleThreads: string;
  idleSpawned: number;
  fullReconcileMs: number;
  error: string | null;
}

async function benchStore(kind: Kind, o: Options, dir: string, binary: string): Promise<Row> {
  const row: Row = {
    kind,
    seedS: Number.NaN,
    readyS: Number.NaN,
    rssReady: Number.NaN,
    rssLater: Number.NaN,
    newPeerMs: [],
    idleCpuS: Number.NaN,
    idleThreads: "",
    idleSpawned: Number.NaN,
    fullReconcileMs: Number.NaN,
    error: null,
  };
  let h: Harness | null = null;
  let agent: ReturnType<typeof Bun.spawn> | null = null;
  let writer: Store | null = null;
  const watcher = routeWatcher();
  const logFile = join(dir, `${kind}-agent.log`);
  try {
    h = await harness(kind, dir);
    writer = await h.open();
    const t0 = performance.now();
    if ((await writer.create(CONFIG_KEY, new TextEncoder().encode(CONFIG))) === null) throw new Error("config already present");
    await seed(writer, 0, o.peers);
    row.seedS = (performance.now() - t0) / 1000;
    console.error(`[${kind}] seeded ${o.peers} leases in ${row.seedS.toFixed(1)} s; starting the agent`);

    const subnetFile = join(dir, `${kind}-subnet.env`);
    const argv = [binary, "run", ...h.flags, "--iface", "eth0", "--subnet-file", subnetFile, "--healthz-port", String(PORT)];
    const start = performance.now();
    agent = Bun.spawn(argv, { stdin: "ignore", stdout: Bun.file(logFile), stderr: Bun.file(logFile) });
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      if (agent.exitCode !== null) throw new Error(`agent exited with ${agent.exitCode}`);
      if (Date.now() > deadline) throw new Error(`agent not ready after ${READY_TIMEOUT_MS / 1000} s`);
      const ok = await fetch(`http://127.0.0.1:${PORT}/readyz`)
        .then((r) => r.status === 200)
        .catch(() => false);
      if (ok) break;
      await Bun.sleep(20);
    }
    row.readyS = (performance.now() - start) / 1000;
    row.rssReady = procStatus(agent.pid, "RssAnon");
    row.fullReconcileMs = (await metric("flannel_bin_reconcile_last_duration_seconds")) * 1000;
    console.error(`[${kind}] ready in ${row.readyS.toFixed(2)} s, RssAnon ${row.rssReady.toFixed(1)} MB`);

    for (let k = 0; k < NEW_PEERS; k++) {
      const i = o.peers + k;
      const dst = `${peerSubnet(i)}/24`;
      const seen = watcher.wait(dst, 10_000);
      const w0 = performance.now();
      await seed(writer, i, i + 1);
      const at = await seen;
      if (at !== undefined) row.newPeerMs.push(at - w0);
      await Bun.sleep(200);
    }

    await Bun.sleep(2_000); // let the last writes settle
    // Every process the agent starts: iproute2 (kernel) and iptables/nft (traffic rules).
    const spawned = async () =>
      (await metric("flannel_bin_kernel_processes_spawned_total")) + (await metric("flannel_bin_rules_processes_spawned_total"));
    const spawned0 = await spawned();
    await Bun.sleep(100); // the CPU window starts after our own /metrics request (~1 ms of the agent's CPU) is answered
    const cpu0 = cpuReading(agent.pid);
    console.error(`[${kind}] idle for ${o.idleS} s`);
    await Bun.sleep(o.idleS * 1000);
    const idle = cpuBetween(cpu0, cpuReading(agent.pid));
    row.idleCpuS = idle.total;
    row.idleThreads = [...idle.byName]
      .filter(([, s]) => s >= 0.0005)
      .map(([n, s]) => `${n} ${(s * 1000).toFixed(0)} ms`)
      .join(", ");
    row.idleSpawned = (await spawned()) - spawned0;
    row.rssLater = procStatus(agent.pid, "RssAnon");
  } catch (e) {
    row.error = `${(e as Error).message}${existsSync(logFile) ? `\n${readFileSync(logFile, "utf8").slice(-2000)}` : ""}`;
  } finally {
    watcher.stop();
    if (agent) {
      agent.kill("SIGTERM");
      const t = setTimeout(() => agent?.kill("SIGKILL"), 10_000);
      await agent.exited;
      clearTimeout(t);
    }
    await writer?.close().catch(() => {});
    await h?.stop().catch((e: Error) => console.error(`[${kind}] stopping the server: ${e.message}`));
    // The agent leaves its kernel state on exit (by design): remove it so the next store starts from nothing.
    Bun.spawnSync(["ip", "link", "del", "flannel.1"], { stdout: "ignore", stderr: "ignore" });
  }
  return row;
}

/**
 * One `ip -batch` of N neighbours and routes plus one `bridge -batch` of N fdb entries on a fresh vxlan device, with
 * routes through nexthop objects (what the agent does where the kernel has them: returned) and with plain gateway
 * routes (quadratic in the kernel: printed beside it).
 */
function floor(n: number): number {
  const plain = floorOnce(n, false);
  const nh = floorOnce(n, true);
  console.error(`floor: ${n} peers, routes through nexthops ${nh.toFixed(2)} s, plain gateway routes ${plain.toFixed(2)} s`);
  return nh;
}

function floorOnce(n: number, nexthops: boolean): number {
  const run = (cmd: string[], input?: string) => {
    const r = Bun.spawnSync(cmd, { stdin: input === undefined ? "ignore" : Buffer.from(input), stdout: "ignore", stderr: "pipe" });
    if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")}: ${r.stderr.toString().slice(0, 300)}`);
  };
  run(["ip", "link", "add", "vxfloor", "type", "vxlan", "id", "99", "local", "192.0.2.1", "dev", "eth0", "dstport", "0", "nolearning"]);
  run(["ip", "link", "set", "vxfloor", "up"]);
  try {
    let ipLines = "";
    let fdbLines = "";
    for (let i = 0; i < n; i++) {
      ipLines += `neigh replace ${peerSubnet(i)} lladdr ${peerMac(i)} dev vxfloor nud permanent\n`;
      fdbLines += `fdb replace ${peerMac(i)} dev vxfloor dst ${peerIP(i)} self permanent\n`;
    }
    const nhBase = 159 * 2 ** 24; // the agent's NEXTHOP_ID_BASE
    for (let i = 0; i < n; i++) {
      const s = peerSubnet(i);
      if (!nexthops) ipLines += `route replace ${s}/24 via ${s} dev vxfloor onlink proto 159\n`;
      else
        ipLines += `nexthop replace id ${nhBase + i} via ${s} dev vxfloor onlink proto 159\nroute replace ${s}/24 nhid ${nhBase + i} proto 159\n`;
    }
    const t0 = performance.now();
    run(["bridge", "-force", "-batch", "-"], fdbLines);
    run(["ip", "-force", "-batch", "-"], ipLines);
    return (performance.now() - t0) / 1000;
  } finally {
    run(["ip", "link", "del", "vxfloor"]);
  }
}

const f1 = (x: number, unit: string) => (Number.isFinite(x) ? `${x.toFixed(x < 10 ? 2 : 1)} ${unit}` : "-");

function table(header: string[], rows: string[][]): string {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(w[i]!)).join(" | ")} |`;
  return [line(header), `|${w.map((n) => "-".repeat(n + 2)).join("|")}|`, ...rows.map(line)].join("\n");
}

async function inner(binary: string, args: string[]): Promise<number> {
  const o = parseArgs(args);
  consola.level = 1;
  const dir = mkdtempSync(join(tmpdir(), "fbs-"));
  const rows: Row[] = [];
  let floorS = Number.NaN;
  try {
    floorS = floor(o.peers);
    console.error(`floor: ${o.peers} neighbours + fdb entries + routes in ${floorS.toFixed(2)} s`);
    for (const k of o.kinds) rows.push(await benchStore(k, o, dir, binary));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const n = o.peers.toLocaleString("en");
  const peerMs = (v: number[]) => {
    const s = [...v].sort((a, b) => a - b);
    return s.length ? `${s[Math.floor(s.length / 2)]!.toFixed(0)} / ${s[s.length - 1]!.toFixed(0)} ms` : "-";
  };
  console.log(
    table(
      [
        "store",
        `seed ${n}`,
        "exec -> ready",
        "floor",
        "RssAnon ready / later",
        "new peer p50 / max",
        `idle ${o.idleS} s: CPU, processes`,
        "full reconcile",
        "before (issue 13)",
      ],
      rows.map((r) => [
        r.kind,
        f1(r.seedS, "s"),
        f1(r.readyS, "s"),
        f1(floorS, "s"),
        `${f1(r.rssReady, "MB")} / ${f1(r.rssLater, "MB")}`,
        peerMs(r.newPeerMs),
        `${f1(r.idleCpuS, "s")}, ${Number.isFinite(r.idleSpawned) ? r.idleSpawned : "-"}`,
        f1(r.fullReconcileMs, "ms"),
        `ready ${BEFORE[r.kind].ready}, anon ${BEFORE[r.kind].rss}`,
      ]),
    ),
  );
  console.log(
    `\ngoals at 10k: ready <= 3 s; RssAnon <= 48 MB; new peer <= 100 ms; idle CPU <= 0.3 s (10k) / 0.05 s (100 peers); 0 processes`,
  );
  for (const r of rows) if (r.idleThreads) console.log(`${r.kind}: idle CPU by thread: ${r.idleThreads}`);
  for (const r of rows) if (r.error) console.log(`${r.kind}: ERROR ${r.error}`);
  return rows.some((r) => r.error) ? 1 : 0;
}

/** The storm runs here, not in the bench namespace: its lab makes namespaces of its own (hosts, underlay). */
function outer(argv: string[]): Promise<number> {
  const o = parseArgs(argv);
  if (!o.storm) return runInBenchNamespace(import.meta.path, ensureBinary(), argv, 1_800_000);
  if (process.getuid?.() !== 0) throw new Error("run as root (creates network namespaces)");
  return runStorm(o.kinds, o.hosts, ensureBinary(), o.keepLab, table);
}

const argv = process.argv.slice(2);
const main = argv[0] === "--inner" ? inner(argv[1]!, argv.slice(2)) : outer(argv);
main.then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  },
);
