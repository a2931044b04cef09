// The join storm of the scale benchmark (issue 13.6): `bun test/bench/scale.ts --storm [--hosts N]` as root.
//
// Per store, side by side in one run: a lab (src/lab: N host namespaces on one underlay bridge, default 50, the
// compiled binary in each, vxlan) is built with no agent running; then every agent is spawned at once and we measure
//   all routes       from the first spawn until every host's kernel has a route to each of the other N-1 subnets
//                    (one `ip -n <host> monitor route` per host, started before the agents; no polling);
//   agent CPU        user + system of the N agents, children (their iproute2 processes) included, read from
//                    /proc/<pid>/stat at that moment;
//   processes        iproute2 processes the agents started (their /metrics), how many of them were batches, and
//                    the traffic rules' processes (iptables-save/-restore, nft, their monitor);
//   server CPU       the etcd / nats-server process over the same time (SQLite has none).
//   floor            one agent started alone on a one-host lab of the same store (no peers): its CPU from exec to
//                    ready, times N; and the CPU of one `flannel-bin --version` (runtime start + module load).
// Goals (issue 13): all routes <= 5 s, agent CPU <= 5 s. Printed, never asserted.
import { consola } from "../../src/log.ts";
import { labDown, labUp } from "../../src/lab/lab.ts";
import { HEALTHZ_PORT, startAgent, waitAgentReady } from "../../src/lab/agents.ts";
import { execIn, processAlive } from "../../src/lab/netns.ts";
import { loadLabState, saveState, type LabState } from "../../src/lab/state.ts";
import { putNetworkConfig, setupStore } from "../../src/lab/store-setup.ts";
import { testName } from "../helpers/binary.ts";
import { peerBinary } from "../helpers/peers.ts";
import { cpuByThreadName, liveChildrenCpu, statCpu } from "./proc-cpu.ts";

/** "nats" on the current nats-server (scripts/setup.sh), "nats-2.9" on Debian's (as in scale.ts and stores.ts). */
export type StormKind = "sqlite" | "etcd" | "nats" | "nats-2.9";

/** The issue's measurements of the earlier build (50 agents, 2-core machine). */
const BEFORE: Record<StormKind, string> = {
  sqlite: "5.8-11.0 s",
  etcd: "10.6-18.0 s, 1,787 batches",
  nats: "8.8-10.3 s (2.9)",
  "nats-2.9": "8.8-10.3 s",
};

/** The lab for a store kind: its store, and the nats-server binary. */
const labStore = (kind: StormKind) =>
  kind === "nats-2.9"
    ? { store: "nats" as const }
    : kind === "nats"
      ? { store: kind, natsServer: peerBinary("nats-server") }
      : { store: kind };
const short = (kind: StormKind) => (kind === "nats-2.9" ? "9" : kind[0]);
const CONVERGE_TIMEOUT_MS = 120_000;

export interface StormRow {
  kind: StormKind;
  hosts: number;
  /** Spawn of the first agent -> every host has every other host's route. */
  allRoutesS: number;
  /** Slowest host's last route, fastest host's last route (s after the first spawn). */
  firstHostS: number;
  agentCpuS: number;
  /** The part of agentCpuS spent in the agents' child processes (iproute2, iptables), reaped or still alive. */
  agentChildrenS: number;
  serverCpuS: number;
  processes: number;
  batches: number;
  rulesProcesses: number;
  /** CPU of one agent started alone on a fresh lab of one host (no peers), until ready: the per-agent floor. */
  aloneCpuS: number;
  /** The agents' own CPU (children not included) by thread name, summed over every agent. */
  byThread: Map<string, number>;
  error: string | null;
}

/** statCpu, or NaN for a process that is gone. */
function cpuOf(pid: number): { self: number; children: number } {
  try {
    return statCpu(pid);
  } catch {
    return { self: Number.NaN, children: Number.NaN };
  }
}
const cpuSeconds = (pid: number) => {
  const c = cpuOf(pid);
  return c.self + c.children;
};

/** `ip -n <ns> -o monitor route`: the set of vxlan peer routes (flannel.1) the host has, kept up to date. */
class RouteCounter {
  readonly routes = new Set<string>();
  lastChange = 0;
  private readonly proc: ReturnType<typeof Bun.spawn>;
  constructor(
    readonly netns: string,
    private readonly onChange: () => void,
  ) {
    this.proc = Bun.spawn(["ip", "-n", netns, "-o", "monitor", "route"], { stdin: "ignore", stdout: "pipe", stderr: "ignore" });
    void this.read();
  }
  private async read(): Promise<void> {
    const dec = new TextDecoder();
    let buf = "";
    for await (const chunk of this.proc.stdout as ReadableStream<Uint8Array>) {
      buf += dec.decode(chunk, { stream: true });
      const lines = buf.split("\n");
      buf = lines.pop() ?? "";
      for (const l of lines) {
        const m = /^(Deleted )?(\d+\.\d+\.\d+\.\d+\/\d+) .*\bdev flannel\.1\b/.exec(l);
        if (!m) continue;
        if (m[1]) this.routes.delete(m[2]!);
        else this.routes.add(m[2]!);
        this.lastChange = performance.now();
      }
      this.onChange();
    }
  }
  stop(): void {
    this.proc.kill("SIGTERM");
  }
}

async function agentMetric(netns: string, names: string[]): Promise<number[]> {
  const r = await execIn(netns, ["curl", "-sf", "--max-time", "2", `http://127.0.0.1:${HEALTHZ_PORT}/metrics`], {
    allowFail: true,
    timeoutMs: 5000,
  });
  return names.map((n) => {
    const line = r.stdout.split("\n").find((l) => l.startsWith(`${n} `));
    return line ? Number(line.split(" ")[1]) : Number.NaN;
  });
}

async function stormStore(kind: StormKind, hosts: number, binary: string, keep: boolean): Promise<StormRow> {
  const row: StormRow = {
    kind,
    hosts,
    allRoutesS: Number.NaN,
    firstHostS: Number.NaN,
    agentCpuS: Number.NaN,
    agentChildrenS: Number.NaN,
    serverCpuS: Number.NaN,
    processes: Number.NaN,
    batches: Number.NaN,
    rulesProcesses: Number.NaN,
    aloneCpuS: Number.NaN,
    byThread: new Map(),
    error: null,
  };
  const name = testName(`storm${short(kind)}`);
  const counters: RouteCounter[] = [];
  try {
    await labDown({ name }); // a lab of ours left by an interrupted run
    await labUp({ name, hosts, ...labStore(kind), binary, topologyOnly: true, noPings: true });
    const s: LabState = loadLabState({ name });
    await setupStore(s);
    await putNetworkConfig(s);
    const want = hosts - 1;
    let wake: () => void = () => {};
    const check = () => wake();
    for (const h of s.hosts) counters.push(new RouteCounter(h.netns, check));
    await Bun.sleep(300); // the monitors are listening
    const server = s.servers[0]?.pid;
    const server0 = server === undefined ? 0 : cpuSeconds(server);
    console.error(`[storm ${kind}] starting ${hosts} agents at once`);
    const t0 = performance.now();
    for (const h of s.hosts) startAgent(s, h);
    saveState(s);
    const deadline = t0 + CONVERGE_TIMEOUT_MS;
    let firstHost = Number.NaN;
    for (;;) {
      const done = counters.filter((c) => c.routes.size >= want);
      if (done.length > 0 && Number.isNaN(firstHost)) firstHost = Math.min(...done.map((c) => c.lastChange)) - t0;
      if (done.length === counters.length) break;
      const dead = s.hosts.find((h) => h.agentPid !== null && !processAlive(h.agentPid));
      if (dead) throw new Error(`agent in ${dead.netns} exited (log ${dead.logFile})`);
      if (performance.now() > deadline) {
        const short = counters.filter((c) => c.routes.size < want).map((c) => `${c.netns} ${c.routes.size}`);
        throw new Error(`not every host had ${want} routes after ${CONVERGE_TIMEOUT_MS / 1000} s: ${short.slice(0, 5).join(", ")}`);
      }
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 200);
      });
    }
    row.allRoutesS = (Math.max(...counters.map((c) => c.lastChange)) - t0) / 1000;
    row.firstHostS = firstHost / 1000;
    let self = 0;
    let children = 0;
    const live = liveChildrenCpu(s.hosts.map((h) => h.agentPid!));
    for (const h of s.hosts) {
      const c = cpuOf(h.agentPid!);
      self += c.self;
      children += c.children + (live.get(h.agentPid!) ?? 0);
    }
    row.byThread = cpuByThreadName(s.hosts.map((h) => h.agentPid!));
    row.agentCpuS = self + children;
    row.agentChildrenS = children;
    if (server !== undefined) row.serverCpuS = cpuSeconds(server) - server0;
    const names = [
      "flannel_bin_kernel_processes_spawned_total",
      "flannel_bin_kernel_batches_total",
      "flannel_bin_rules_processes_spawned_total",
    ];
    const per = await Promise.all(s.hosts.map((h) => agentMetric(h.netns, names)));
    row.processes = per.reduce((a, m) => a + m[0]!, 0);
    row.batches = per.reduce((a, m) => a + m[1]!, 0);
    row.rulesProcesses = per.reduce((a, m) => a + m[2]!, 0);
    console.error(`[storm ${kind}] all routes in ${row.allRoutesS.toFixed(2)} s, agent CPU ${row.agentCpuS.toFixed(2)} s`);
  } catch (e) {
    row.error = (e as Error).message;
  } finally {
    for (const c of counters) c.stop();
    if (keep) console.error(`[storm ${kind}] lab kept: \`flannel-bin lab down --name ${name}\` removes it`);
    else {
      const down = await labDown({ name }).catch((e: Error) => ({ removed: [], errors: [e.message] }));
      if (down.errors.length) console.error(`[storm ${kind}] lab down: ${down.errors.join("; ")}`);
    }
  }
  return row;
}

/** One agent alone on a one-host lab of this store: its CPU (children included) from exec to ready. */
async function aloneCpu(kind: StormKind, binary: string): Promise<number> {
  const name = testName(`alone${short(kind)}`);
  try {
    await labDown({ name });
    await labUp({ name, hosts: 1, ...labStore(kind), binary, topologyOnly: true, noPings: true });
    const s = loadLabState({ name });
    await setupStore(s);
    await putNetworkConfig(s);
    const h = s.hosts[0]!;
    startAgent(s, h);
    await waitAgentReady(h);
    return cpuSeconds(h.agentPid!) + (liveChildrenCpu([h.agentPid!]).get(h.agentPid!) ?? 0);
  } finally {
    await labDown({ name }).catch(() => {});
  }
}

/** CPU of one `binary --version` (the runtime's own start and the bundle's module load), median of 5. */
function execCpu(binary: string): number {
  const runs: number[] = [];
  for (let i = 0; i < 5; i++) {
    const p = Bun.spawnSync([binary, "--version"], { stdout: "ignore", stderr: "ignore" });
    const u = p.resourceUsage;
    runs.push(u ? Number(u.cpuTime.user + u.cpuTime.system) / 1e6 : Number.NaN);
  }
  return runs.sort((a, b) => a - b)[2]!;
}

const f2 = (x: number, unit: string) => (Number.isFinite(x) ? `${x.toFixed(2)} ${unit}` : "-");

/** `keep`: leave each lab up after its run (agent logs in /run/flannel-bin-lab/<name>/). */
export async function runStorm(
  kinds: StormKind[],
  hosts: number,
  binary: string,
  keep: boolean,
  table: (h: string[], r: string[][]) => string,
): Promise<number> {
  consola.level = 1;
  const rows: StormRow[] = [];
  for (const k of kinds) {
    const row = await stormStore(k, hosts, binary, keep);
    row.aloneCpuS = await aloneCpu(k, binary).catch((e: Error) => {
      console.error(`[storm ${k}] one agent alone: ${e.message}`);
      return Number.NaN;
    });
    rows.push(row);
  }
  const exec = execCpu(binary);
  console.log(
    table(
      [
        "store",
        "agents",
        "all routes everywhere",
        "first host done",
        "agent CPU: total (children)",
        "iproute2 processes (batches)",
        "rules processes",
        "server CPU",
        `floor: ${hosts} x one agent alone`,
        "before (issue 13)",
      ],
      rows.map((r) => [
        r.kind,
        String(r.hosts),
        f2(r.allRoutesS, "s"),
        f2(r.firstHostS, "s"),
        `${f2(r.agentCpuS, "s")} (${f2(r.agentChildrenS, "s")})`,
        Number.isFinite(r.processes) ? `${r.processes} (${r.batches})` : "-",
        Number.isFinite(r.rulesProcesses) ? String(r.rulesProcesses) : "-",
        f2(r.serverCpuS, "s"),
        `${f2(r.aloneCpuS * hosts, "s")} (${f2(r.aloneCpuS, "s")} each)`,
        BEFORE[r.kind],
      ]),
    ),
  );
  console.log(
    `\nfloor: one agent alone = its CPU from exec to ready on a one-host lab (no peers), x ${hosts}; ` +
      `\`flannel-bin --version\` alone costs ${f2(exec, "s")} of CPU (x ${hosts} = ${f2(exec * hosts, "s")})`,
  );
  console.log(`goals (issue 13): every host has all ${hosts - 1} routes <= 5 s; total agent CPU <= 5 s`);
  for (const r of rows) {
    const top = [...r.byThread].sort((a, b) => b[1] - a[1]).slice(0, 8);
    if (top.length) console.log(`${r.kind}: agents' own CPU by thread: ${top.map(([n, v]) => `${n} ${v.toFixed(2)} s`).join(", ")}`);
  }
  for (const r of rows) if (r.error) console.log(`${r.kind}: ERROR ${r.error}`);
  return rows.some((r) => r.error) ? 1 : 0;
}
