// Helpers for the tests that run flannel-bin beside the real flanneld (test peers from scripts/setup.sh): the lab's
// etcd as flanneld sees it, and pings that run while something changes.
import { type LabHost, type LabState, labDown, labUp } from "../../src/lab/lab.ts";
import { peerBinary } from "../helpers/peers.ts";
import { ensureBinary, etcdctl } from "./helpers.ts";

/**
 * A 4-host vxlan lab on its own etcd, hosts 1-2 running flanneld and 3-4 flannel-bin (any leftover of the same name
 * removed first); throws unless every container pair pings.
 */
export async function upMixedVxlanLab(
  lab: { name: string },
  opts: { etcdPrefix?: string; flanneldArgs?: string[]; agentArgs?: string[] } = {},
): Promise<void> {
  await labDown(lab);
  const report = await labUp({
    ...lab,
    hosts: 4,
    backend: "vxlan",
    store: "etcd",
    etcdPrefix: opts.etcdPrefix,
    flanneld: { binary: peerBinary("flannel"), hosts: [1, 2], args: opts.flanneldArgs },
    agentArgs: opts.agentArgs,
    binary: await ensureBinary(),
  });
  if (!report.ok) throw new Error(`mixed lab not fully reachable: ${JSON.stringify(report.pairs.filter((p) => !p.ok))}`);
}

/** The lab's etcd endpoint and key prefix, from the store flags every agent got. */
export function etcdOf(s: LabState): { endpoint: string; prefix: string } {
  const at = (name: string) => {
    const i = s.storeFlags.indexOf(name);
    return i >= 0 ? s.storeFlags[i + 1] : undefined;
  };
  const endpoint = at("--etcd-endpoints");
  if (!endpoint) throw new Error(`lab ${s.name} has no etcd store`);
  return { endpoint, prefix: at("--etcd-prefix") ?? "/coreos.com/network" };
}

export interface EtcdLease {
  key: string;
  value: string;
  modRevision: number;
  /** etcd lease ID (0 = none: a reservation). */
  lease: string;
}

interface JKv {
  key: string;
  value?: string;
  mod_revision?: number;
  lease?: number | string;
}

const b64 = (s: string) => Buffer.from(s, "base64").toString("utf8");

/** `etcdctl get --prefix <prefix>/subnets/ -w json`, decoded. */
export async function etcdLeases(s: LabState): Promise<EtcdLease[]> {
  const { endpoint, prefix } = etcdOf(s);
  const out = await etcdctl(s.underlay, endpoint, ["get", "--prefix", `${prefix}/subnets/`, "-w", "json"]);
  // etcd lease IDs are 64-bit: quoted before parsing, or neighbouring IDs round to one double.
  const kvs = ((JSON.parse(out.replace(/"lease":(\d+)/g, '"lease":"$1"')) as { kvs?: JKv[] }).kvs ?? []) as JKv[];
  return kvs.map((kv) => ({
    key: b64(kv.key),
    value: b64(kv.value ?? ""),
    modRevision: Number(kv.mod_revision ?? 0),
    lease: String(kv.lease ?? 0),
  }));
}

/** `etcdctl get --prefix` as an operator types it: key and value lines. */
export async function etcdGetPrefix(s: LabState): Promise<string> {
  const { endpoint, prefix } = etcdOf(s);
  return etcdctl(s.underlay, endpoint, ["get", "--prefix", `${prefix}/subnets/`]);
}

export async function etcdDelete(s: LabState, key: string): Promise<void> {
  const { endpoint } = etcdOf(s);
  const out = await etcdctl(s.underlay, endpoint, ["del", key]);
  if (out.trim() !== "1") throw new Error(`etcdctl del ${key} deleted ${out.trim() || "nothing"}`);
}

/** The lease key of a host's subnet ("10.5.72.1/24" in subnet.env -> "<prefix>/subnets/10.5.72.0-24"). */
export function leaseKey(s: LabState, subnet: string): string {
  const [net, len] = subnet.split("/") as [string, string];
  return `${etcdOf(s).prefix}/subnets/${net}-${len}`;
}

export interface PingTally {
  to: string;
  transmitted: number;
  received: number;
  output: string;
}

/**
 * Pings from `from`'s container to every `to` container, `count` packets 10 ms apart, while `during` runs (it starts
 * after `leadMs` of pings); returns each target's tally once every ping has finished. Bounded: ping's own -w deadline,
 * and SIGKILL after that.
 */
export async function pingWhile(
  from: LabHost,
  to: LabHost[],
  during: () => Promise<void>,
  opts: { count?: number; leadMs?: number } = {},
): Promise<PingTally[]> {
  const count = opts.count ?? 800;
  const deadlineS = Math.ceil((count * 10) / 1000) * 4 + 10;
  const runs = to.map((h) => {
    const p = Bun.spawn(
      [
        "ip",
        "netns",
        "exec",
        from.containerNetns!,
        "ping",
        "-n",
        "-q",
        "-i",
        "0.01",
        "-c",
        String(count),
        "-w",
        String(deadlineS),
        h.containerIP!,
      ],
      { stdout: "pipe", stderr: "pipe" },
    );
    const killer = setTimeout(() => p.kill("SIGKILL"), (deadlineS + 5) * 1000);
    const done = (async () => {
      const output = await new Response(p.stdout).text();
      await p.exited;
      clearTimeout(killer);
      const m = /(\d+) packets transmitted, (\d+) received/.exec(output);
      return { to: h.netns, transmitted: Number(m?.[1] ?? 0), received: Number(m?.[2] ?? 0), output: output.trim() };
    })();
    return { p, done };
  });
  try {
    await Bun.sleep(opts.leadMs ?? 1000);
    await during();
  } catch (e) {
    for (const r of runs) r.p.kill("SIGKILL");
    throw e;
  }
  return Promise.all(runs.map((r) => r.done));
}

export const lost = (t: PingTally) => t.transmitted - t.received;
