// Route programming benchmark: `bun test/bench/routes.ts [peers=10000] [rounds=5]` (root; makes its own namespace,
// named with FLANNEL_BIN_TEST_PREFIX).
//
// For host-gw (one route per peer) and vxlan (neighbour + fdb + route per peer) it compares, in one run:
//   agent  Reconciler.set() for every peer fragment, then flush() (validation, diffing, planning streamed into the
//          batch processes, result mapping)
//   raw    the same lines piped into `ip -force -batch -` (and `bridge -force -batch -` for fdb) once, each process
//          spawned and waited for inside the timing: the floor; twice: routes through nexthop objects (what the agent
//          sends where the kernel has them: one nexthop per gateway, then the route by nhid) and plain gateway routes
//          (the fallback, and what flanneld programs)
//   exec   one `ip`/`bridge` process per command, measured on a sample and extrapolated
// Before timing, one agent run is recorded line by line and must equal the raw lines (same lines, same order, same
// processes), so both sides do the same kernel work from the same freshly reset namespace.
// Every peer has its own gateway (host-gw: its public IP; vxlan: its subnet address, onlink), so with plain routes the
// kernel holds one fib_info per route, all in one hash chain (the hash leaves the gateway out): quadratic. Through
// nexthop objects it is linear. The "one gateway" row shows the user-space cost alone.
// Kernel state is cleared between runs; the order of agent and raw alternates per round. Each time is the median of
// the rounds; agent/raw is the median of each round's own ratio (agent and raw measured back to back, so a burst of
// load from elsewhere hits both), with the range over rounds. The load average is printed before and after.
import { randomBytes } from "node:crypto";
import { loadavg } from "node:os";
import { type Command, fdbReplace, neighReplace, nexthopReplace, routeReplace, routeReplaceNh } from "../../src/kernel/commands.ts";
import { CommandQueue, type CommandResult } from "../../src/kernel/queue.ts";
import { Reconciler } from "../../src/kernel/reconciler.ts";
import { NEXTHOP_ID_BASE, ROUTE_PROTO, type Route, type StateFragment, type VxlanDevice } from "../../src/kernel/types.ts";
import { testName } from "../helpers/binary.ts";
import { hostgwPeerState, vxlanDevice, vxlanLinkAdd, vxlanPeerState } from "../helpers/kernel-fixtures.ts";

const PEERS = Number(process.argv[2] ?? 10_000);
const ROUNDS = Number(process.argv[3] ?? 5);
const SAMPLE = Math.min(500, PEERS);
if (!(PEERS > 0 && PEERS <= 60_000) || !(ROUNDS > 0 && ROUNDS <= 20)) throw new Error("usage: routes.ts [peers<=60000] [rounds<=20]");

const ns = testName(`fbt-bench-${randomBytes(3).toString("hex")}`);
function sh(cmd: string[], stdin?: string): void {
  const r = Bun.spawnSync(cmd, { stdin: stdin === undefined ? "ignore" : Buffer.from(stdin), stdout: "ignore", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")}: ${r.stderr.toString().slice(0, 500)}`);
}
const ip = (...a: string[]) => sh(["ip", "-n", ns, ...a]);

const VX: VxlanDevice = vxlanDevice({ local: "172.16.0.1" });
const subnet = (i: number) => `10.${(i >> 8) & 255}.${i & 255}.0`;
const pubIP = (i: number) => `172.16.${1 + (i >> 8)}.${i & 255}`;
const mac = (i: number) => `02:bb:00:00:${((i >> 8) & 255).toString(16).padStart(2, "0")}:${(i & 255).toString(16).padStart(2, "0")}`;

const hostgwPeer = (i: number): StateFragment => hostgwPeerState(subnet(i), pubIP(i));
// Not a real deployment (every peer behind one gateway), but the kernel then shares one fib_info for all routes and
// costs ~12 µs per route instead of ~130 µs, so the agent's own user-space overhead shows.
const sharedGwPeer = (i: number): StateFragment => hostgwPeerState(subnet(i), "172.16.0.2");
type Kind = "host-gw" | "host-gw, one gateway" | "vxlan";
const vxlanPeer = (i: number): StateFragment => vxlanPeerState(subnet(i), mac(i), pubIP(i));

/** Route lines through nexthop objects as the agent makes them: a gateway's nexthop before its first route. */
function nexthopRouteLines(routes: Route[]): string[] {
  const ids = new Map<string, number>();
  const out: string[] = [];
  for (const r of routes) {
    const key = `${r.via} ${r.dev} ${r.onlink}`;
    let id = ids.get(key);
    if (id === undefined) {
      id = NEXTHOP_ID_BASE + ids.size;
      ids.set(key, id);
      out.push(nexthopReplace({ id, via: r.via, dev: r.dev, onlink: r.onlink }, ROUTE_PROTO).line);
    }
    out.push(routeReplaceNh(r, id, ROUTE_PROTO).line);
  }
  return out;
}

/** Lines grouped the way the agent sends them: bridge (fdb) | ip (neigh, then route or nexthop + route). */
function rawGroups(frags: StateFragment[], nexthops: boolean): { tool: "ip" | "bridge"; lines: string[] }[] {
  const neigh = frags.flatMap((f) => (f.neighs ?? []).map((n) => neighReplace(n).line));
  const fdb = frags.flatMap((f) => (f.fdbs ?? []).map((x) => fdbReplace(x).line));
  const routes = frags.flatMap((f) => f.routes ?? []);
  const route = nexthops ? nexthopRouteLines(routes) : routes.map((r) => routeReplace(r, ROUTE_PROTO).line);
  return [
    { tool: "bridge" as const, lines: fdb },
    { tool: "ip" as const, lines: [...neigh, ...route] },
  ].filter((g) => g.lines.length);
}

function reset(kind: Kind): void {
  // Nexthops first: deleting one takes its routes along, and iproute2 6.1's route flush fails on nhid routes.
  ip("nexthop", "flush", "proto", String(ROUTE_PROTO));
  ip("route", "flush", "proto", String(ROUTE_PROTO));
  if (kind === "vxlan") {
    // A fresh device: no neighbours, no fdb entries, no routes.
    Bun.spawnSync(["ip", "-n", ns, "link", "del", "flannel.1"]);
    ip(...vxlanLinkAdd(VX));
    ip("addr", "add", "10.255.255.0/32", "dev", "flannel.1");
    ip("link", "set", "flannel.1", "up");
  }
}

/** A queue that also keeps every line it is handed, grouped into runs of one tool as the queue sends them. */
class RecordingQueue extends CommandQueue {
  readonly groups: { tool: "ip" | "bridge"; lines: string[] }[] = [];
  override runAll(cmds: Iterable<Command>): Promise<CommandResult[]> {
    const groups = this.groups;
    function* tee(): Generator<Command> {
      for (const c of cmds) {
        const last = groups[groups.length - 1];
        if (last?.tool === c.tool) last.lines.push(c.line);
        else groups.push({ tool: c.tool, lines: [c.line] });
        yield c;
      }
    }
    return super.runAll(tee());
  }
}

async function timeAgent(
  kind: Kind,
  frags: StateFragment[],
  q = new CommandQueue({ netns: ns }), // defaults, as the agent runs it
): Promise<{ ms: number; batches: number; failed: number; nh: boolean }> {
  const r = new Reconciler(q, { ownedDevices: kind === "vxlan" ? ["flannel.1"] : [], netns: ns });
  await r.flush(); // decides nexthops vs plain routes (one `ip nexthop show`), as the agent's first drain does
  if (kind === "vxlan") {
    r.set("local", { devices: [VX], addresses: [{ dev: "flannel.1", cidr: "10.255.255.0/32" }] });
    await r.flush(); // device already exists and matches: one read, no commands
  }
  const before = q.stats();
  const t0 = performance.now();
  for (let i = 0; i < frags.length; i++) r.set(`peer:${i}`, frags[i]!);
  await r.flush();
  const ms = performance.now() - t0;
  const s = q.stats();
  const nh = r.usesNexthops === true;
  r.stop();
  q.close();
  return { ms, batches: s.batches - before.batches, failed: s.failed, nh };
}

/** One untimed agent run, recorded: its lines must be the raw ones, in the same processes. */
async function checkSameLines(kind: Kind, frags: StateFragment[], groups: { tool: string; lines: string[] }[]): Promise<void> {
  reset(kind);
  const q = new RecordingQueue({ netns: ns });
  const a = await timeAgent(kind, frags, q);
  if (a.failed) throw new Error(`${kind}: ${a.failed} agent commands failed`);
  const got = q.groups.filter((g) => !g.lines[0]!.startsWith("link") && !g.lines[0]!.startsWith("addr"));
  const same =
    got.length === groups.length &&
    got.every(
      (g, i) =>
        g.tool === groups[i]!.tool && g.lines.length === groups[i]!.lines.length && g.lines.every((l, k) => l === groups[i]!.lines[k]),
    );
  if (!same)
    throw new Error(`${kind}: the agent's lines differ from the raw ones (${got.map((g) => `${g.tool} ${g.lines.length}`).join(", ")})`);
}

async function timeRaw(groups: { tool: "ip" | "bridge"; lines: string[] }[]): Promise<number> {
  const texts = groups.map((g) => ({ tool: g.tool, text: `${g.lines.join("\n")}\n` }));
  const t0 = performance.now();
  for (const g of texts) {
    const p = Bun.spawn([g.tool, "-n", ns, "-force", "-batch", "-"], { stdin: Buffer.from(g.text), stdout: "ignore", stderr: "pipe" });
    const err = await new Response(p.stderr).text();
    if ((await p.exited) !== 0) throw new Error(`raw ${g.tool} batch failed: ${err.slice(0, 300)}`);
  }
  return performance.now() - t0;
}

/** One process per command on the first SAMPLE peers, extrapolated to all peers. */
function timeExec(groups: { tool: "ip" | "bridge"; lines: string[] }[], perPeer: number): number {
  const cmds = groups.flatMap((g) => g.lines.slice(0, SAMPLE).map((l) => [g.tool, "-n", ns, ...l.split(" ")]));
  const t0 = performance.now();
  for (const c of cmds) {
    const r = Bun.spawnSync(c, { stdout: "ignore", stderr: "pipe" });
    if (r.exitCode !== 0) throw new Error(`${c.join(" ")}: ${r.stderr.toString()}`);
  }
  const ms = performance.now() - t0;
  return (ms / cmds.length) * PEERS * perPeer;
}

const load = () =>
  loadavg()
    .map((x) => x.toFixed(2))
    .join(" ");
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const loadStart = load();
  sh(["ip", "netns", "add", ns]);
  try {
    ip("link", "set", "lo", "up");
    ip("link", "add", "ul0", "type", "bridge");
    ip("addr", "add", "172.16.0.1/12", "dev", "ul0");
    ip("link", "set", "ul0", "up");
    const rows: string[][] = [];
    for (const kind of ["host-gw", "host-gw, one gateway", "vxlan"] as const) {
      const make = kind === "vxlan" ? vxlanPeer : kind === "host-gw" ? hostgwPeer : sharedGwPeer;
      const frags = Array.from({ length: PEERS }, (_, i) => make(i));
      const groups = rawGroups(frags, true);
      const plainGroups = rawGroups(frags, false);
      const perPeer = kind === "vxlan" ? 3 : 1;
      await checkSameLines(kind, frags, groups);
      const agent: number[] = [];
      const raw: number[] = [];
      const rawPlain: number[] = [];
      let batches = 0;
      let nh = false;
      for (let round = 0; round < ROUNDS; round++) {
        const runAgent = async () => {
          reset(kind);
          const a = await timeAgent(kind, frags);
          if (a.failed) throw new Error(`${kind}: ${a.failed} agent commands failed`);
          agent.push(a.ms);
          batches = a.batches;
          nh = a.nh;
        };
        const runRaw = async () => {
          reset(kind);
          raw.push(await timeRaw(groups));
          reset(kind);
          rawPlain.push(await timeRaw(plainGroups));
        };
        if (round % 2 === 0) {
          await runRaw();
          await runAgent();
        } else {
          await runAgent();
          await runRaw();
        }
      }
      reset(kind);
      const exec = timeExec(plainGroups, perPeer);
      const a = median(agent);
      const r = median(raw);
      const rp = median(rawPlain);
      const ratios = agent.map((x, i) => x / (nh ? raw : rawPlain)[i]!);
      rows.push([
        kind,
        String(PEERS * perPeer),
        `${a.toFixed(1)} ms (${batches} proc, ${nh ? "nexthops" : "plain routes"})`,
        `${r.toFixed(1)} ms (${groups.length} proc)`,
        `${rp.toFixed(1)} ms`,
        `~${(exec / 1000).toFixed(1)} s`,
        `${median(ratios).toFixed(2)} (${Math.min(...ratios).toFixed(2)}-${Math.max(...ratios).toFixed(2)})`,
        `agent runs: ${agent.map((x) => x.toFixed(0)).join("/")}, raw nexthop runs: ${raw.map((x) => x.toFixed(0)).join("/")}, raw plain runs: ${rawPlain.map((x) => x.toFixed(0)).join("/")}`,
      ]);
    }
    const head = [
      "backend",
      "commands",
      "agent (set+flush)",
      "raw ip -batch, nexthops",
      "raw ip -batch, plain routes",
      `1 process/cmd (${SAMPLE} peers, extrapolated)`,
      "agent/raw (same mode), median of rounds (range)",
      "detail",
    ];
    console.log(`\n${PEERS} peers, median of ${ROUNDS} rounds, namespace ${ns}, load average ${loadStart} at start, ${load()} at end\n`);
    console.log(`| ${head.join(" | ")} |\n|${head.map(() => "---").join("|")}|`);
    for (const r of rows) console.log(`| ${r.join(" | ")} |`);
  } finally {
    Bun.spawnSync(["ip", "netns", "del", ns]);
  }
}

await main();
