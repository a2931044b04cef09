// End-to-end test helpers: the compiled binary, kernel state of a lab host (routes, neighbours, fdb) and bounded waits.
import { afterAll, beforeAll, expect } from "bun:test";
import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ensureBinary as ensureBuilt } from "../helpers/binary.ts";
import { type LabHost, type LabState, labDown, labStateDir, labUp, readLabState, readSubnetEnv } from "../../src/lab/lab.ts";
import { execIn, ip, run, waitFor } from "../../src/lab/netns.ts";

export { BINARY, REPO, testName } from "../helpers/binary.ts";

/** The binary under test, rebuilt when stale (see test/helpers/binary.ts). */
export async function ensureBinary(): Promise<string> {
  return ensureBuilt();
}

/**
 * For one describe block: a 2-host lab on the SQLite store, up (every pair pinging) before its tests and down after
 * them, also when they fail. Hooks registered after this one run after it, so they can read the lab's hosts.
 */
export function twoHostLab(lab: { name: string }, backend: "vxlan" | "host-gw", agentArgs: string[]): void {
  beforeAll(async () => {
    const binary = await ensureBinary();
    await labDown(lab);
    const report = await labUp({ ...lab, hosts: 2, backend, store: "sqlite", binary, agentArgs });
    expect(report.pairs.filter((p) => !p.ok)).toEqual([]);
  }, 180_000);
  afterAll(async () => {
    const r = await labDown(lab);
    if (r.errors.length) console.error(r.errors);
  }, 60_000);
}

export function labState(lab: { name: string; stateDir?: string }): LabState {
  const s = readLabState(lab);
  if (!s) throw new Error(`lab ${lab.name} has no state file`);
  return s;
}

export function host(lab: { name: string; stateDir?: string }, index: number): LabHost {
  const h = labState(lab).hosts.find((x) => x.index === index);
  if (!h) throw new Error(`lab ${lab.name} has no host ${index}`);
  return h;
}

export interface PeerInfo {
  /** Lease subnet, e.g. "10.5.72.0/24". */
  subnet: string;
  /** Its network address, the vxlan gateway/neighbour, e.g. "10.5.72.0". */
  subnetIP: string;
  publicIP: string;
  /** flannel.1's MAC (vxlan only). */
  vtepMac: string | null;
}

/** What the other hosts should know about `h`: read from its subnet.env and its flannel.1 device. */
export async function peerInfo(h: LabHost): Promise<PeerInfo> {
  const env = readSubnetEnv(h);
  if (!env) throw new Error(`${h.subnetFile} missing or unusable`);
  const [addr, prefix] = env.subnet.split("/") as [string, string];
  const o = addr.split(".").map(Number);
  const subnetIP = [o[0], o[1], o[2], (o[3] ?? 1) - 1].join(".");
  const r = await ip(["-j", "link", "show", "flannel.1"], h.netns, { allowFail: true });
  const vtepMac = r.code === 0 ? ((JSON.parse(r.stdout) as { address?: string }[])[0]?.address ?? null) : null;
  return { subnet: `${subnetIP}/${prefix}`, subnetIP, publicIP: h.publicIP, vtepMac };
}

interface JRoute {
  dst: string;
  gateway?: string;
  dev?: string;
  protocol?: string;
  flags?: string[];
  /** flannel-bin's peer routes go through a nexthop object where the kernel has them. */
  nhid?: number;
}
interface JNeigh {
  dst: string;
  dev?: string;
  lladdr?: string;
  state?: string[];
}
interface JFdb {
  mac: string;
  ifname?: string;
  dst?: string;
  flags?: string[];
}

export async function routes(netns: string): Promise<JRoute[]> {
  return JSON.parse((await ip(["-j", "route", "show", "table", "main"], netns)).stdout || "[]") as JRoute[];
}

export async function neighs(netns: string, dev = "flannel.1"): Promise<JNeigh[]> {
  const r = await ip(["-j", "neigh", "show", "dev", dev], netns, { allowFail: true });
  return r.code === 0 ? (JSON.parse(r.stdout || "[]") as JNeigh[]) : [];
}

export async function fdb(netns: string, dev = "flannel.1"): Promise<JFdb[]> {
  const r = await run(["bridge", "-j", "fdb", "show", "dev", dev], { netns, allowFail: true });
  return r.code === 0 ? (JSON.parse(r.stdout || "[]") as JFdb[]) : [];
}

/** Which of route / neighbour / fdb entry for `peer` exist on host `netns`. */
export async function knowsPeer(netns: string, peer: PeerInfo): Promise<{ route: boolean; neigh: boolean; fdb: boolean }> {
  const [rs, ns, fs] = await Promise.all([routes(netns), neighs(netns), fdb(netns)]);
  return {
    route: rs.some((r) => r.dst === peer.subnet),
    neigh: ns.some((n) => n.dst === peer.subnetIP),
    fdb: fs.some((f) => (peer.vtepMac !== null && f.mac === peer.vtepMac) || f.dst === peer.publicIP),
  };
}

/** Polls cond() until true; fails with `what` after timeoutMs. Bounded in time and count. */
export async function waitUntil(what: string, timeoutMs: number, cond: () => Promise<boolean>, intervalMs = 250): Promise<void> {
  await waitFor(what, timeoutMs, async () => ((await cond()) ? true : undefined), intervalMs);
}

/** Deletes a host's lease with the binary's own `leases delete`, from inside the underlay (reaches any lab store). */
export async function deleteLease(lab: { name: string; stateDir?: string }, peer: PeerInfo): Promise<void> {
  const s = labState(lab);
  await execIn(s.underlay, [s.binary, "leases", "delete", peer.subnet, ...s.storeFlags], { timeoutMs: 15_000 });
}

/** `ETCDCTL_API=3 etcdctl --endpoints=<endpoint> <args>` inside `netns` (which must reach the server); its stdout. */
export async function etcdctl(netns: string, endpoint: string, args: string[]): Promise<string> {
  const r = await execIn(netns, ["env", "ETCDCTL_API=3", "etcdctl", `--endpoints=${endpoint}`, ...args], { timeoutMs: 20_000 });
  return r.stdout;
}

/**
 * Changes a lab's lab.json (atomically) for what the lab API has no option for, e.g. agents started with other store
 * flags (labAddHost/labStartHost use `storeFlags`), or a PID the test started so that labDown also stops it.
 * Only while no lab function runs on this lab.
 */
export function updateLabState(lab: { name: string; stateDir?: string }, change: (s: LabState) => void): LabState {
  const s = labState(lab);
  change(s);
  const file = join(labStateDir(lab), "lab.json");
  writeFileSync(`${file}.tmp`, `${JSON.stringify(s, null, 2)}\n`, { mode: 0o644 });
  renameSync(`${file}.tmp`, file);
  return s;
}

/**
 * TCP throughput from one container to another with iperf3 (1 s, bounded): the server runs once (-1) in the target
 * container and is stopped by its PID afterwards in any case. Returns bits per second received.
 */
export async function iperf(fromNetns: string, toNetns: string, toIP: string): Promise<number> {
  const server = Bun.spawn(["ip", "netns", "exec", toNetns, "iperf3", "-s", "-1", "-B", toIP], { stdout: "ignore", stderr: "ignore" });
  try {
    for (let i = 0; i < 40; i++) {
      const probe = Bun.spawnSync(["ip", "netns", "exec", toNetns, "ss", "-Hltn", `sport = :5201`], { stdout: "pipe" });
      if (probe.stdout.toString().includes("5201")) break;
      await Bun.sleep(50);
    }
    const client = Bun.spawn(["ip", "netns", "exec", fromNetns, "iperf3", "-c", toIP, "-t", "1", "-J", "--connect-timeout", "3000"], {
      stdout: "pipe",
      stderr: "pipe",
    });
    const killer = setTimeout(() => client.kill("SIGKILL"), 15_000);
    const out = await new Response(client.stdout).text();
    clearTimeout(killer);
    await client.exited;
    const j = JSON.parse(out) as { end?: { sum_received?: { bits_per_second?: number } }; error?: string };
    if (j.error) throw new Error(`iperf3 ${fromNetns} -> ${toIP}: ${j.error}`);
    return j.end?.sum_received?.bits_per_second ?? 0;
  } finally {
    server.kill("SIGTERM");
    await server.exited;
  }
}
