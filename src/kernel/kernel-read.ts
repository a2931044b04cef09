// Reading the kernel: `ip -json` / `bridge -json` output parsed into the reconciler's typed values. Everything
// here is parsed defensively (the output is checked field by field and validated like store input), and the parse
// functions are pure so they are unit-tested without root.
import type { KLink } from "./device-compat.ts";
import { bridgeJson, ipJson, nsArgs, processesSpawned } from "./queue.ts";
import type { Fdb, Neigh } from "./types.ts";
import { validAddress, validDevName, validFdb, validIP, validNeigh, validNet, validNexthopId } from "./validate.ts";
import { endChild, writeChild } from "../child-stdin.ts";

/** A route as read back from the kernel: gateway and device may be absent on routes someone else tagged with our proto. */
export interface KRoute {
  dst: string;
  via?: string;
  dev?: string;
  onlink: boolean;
  /** The nexthop object the route goes through (its gateway and device are the nexthop's). */
  nhid?: number;
}

/** A nexthop object as read back: gateway and device are absent on groups and blackholes. */
export interface KNexthop {
  id: number;
  proto?: number;
  via?: string;
  dev?: string;
  onlink: boolean;
  /** A group or blackhole: nothing we make. */
  special: boolean;
}

type Json = Record<string, unknown>;

const objects = (x: unknown): Json[] => (Array.isArray(x) ? x.filter((o): o is Json => typeof o === "object" && o !== null) : []);

/** One entry of `ip -json -4|-6 route show`: "default" and bare host addresses become CIDRs of that family. */
export function parseRoute(r: Json, family: 4 | 6): KRoute | null {
  if (typeof r.dst !== "string") return null;
  try {
    let dst = r.dst;
    const v6 = family === 6;
    if (dst === "default") dst = v6 ? "::/0" : "0.0.0.0/0";
    else if (!dst.includes("/")) dst += v6 ? "/128" : "/32";
    const kr: KRoute = { dst: validNet(dst, "route dst"), onlink: Array.isArray(r.flags) && r.flags.includes("onlink") };
    if (typeof r.gateway === "string") kr.via = validIP(r.gateway, "route gateway");
    if (typeof r.dev === "string") kr.dev = validDevName(r.dev, "route dev");
    if (r.nhid !== undefined) kr.nhid = validNexthopId(r.nhid);
    return kr;
  } catch {
    return null;
  }
}

/** One entry of `ip -json nexthop show`; null when its id is not a valid one. Protocol is printed as a number or a name. */
export function parseNexthop(n: Json): KNexthop | null {
  try {
    const nh: KNexthop = { id: validNexthopId(n.id), onlink: Array.isArray(n.flags) && n.flags.includes("onlink"), special: false };
    const p = typeof n.protocol === "string" && /^\d{1,3}$/.test(n.protocol) ? Number(n.protocol) : n.protocol;
    if (typeof p === "number" && Number.isInteger(p) && p >= 0 && p <= 255) nh.proto = p;
    if ("group" in n || "blackhole" in n || "fdb" in n) nh.special = true;
    if (typeof n.gateway === "string") nh.via = validIP(n.gateway, "nexthop gateway");
    if (typeof n.dev === "string") nh.dev = validDevName(n.dev, "nexthop dev");
    return nh;
  } catch {
    return null;
  }
}

/** PERMANENT neighbours of `ip -json neigh show dev D` (learned entries are not ours); invalid ones are skipped. */
export function parseNeighs(dev: string, list: unknown): Neigh[] {
  const out: Neigh[] = [];
  for (const n of objects(list)) {
    const state = n.state;
    if (!Array.isArray(state) || !state.includes("PERMANENT")) continue;
    try {
      out.push(validNeigh({ dev, ip: n.dst, lladdr: n.lladdr }));
    } catch {
      /* not something we could have made */
    }
  }
  return out;
}

/** Permanent entries with a remote of `bridge -json fdb show dev D` (vxlan Learning entries are not ours). */
export function parseFdbs(dev: string, list: unknown): Fdb[] {
  const out: Fdb[] = [];
  for (const f of objects(list)) {
    if (typeof f.dst !== "string" || f.state !== "permanent") continue;
    try {
      out.push(validFdb({ dev, mac: f.mac, dst: f.dst }));
    } catch {
      /* not something we could have made */
    }
  }
  return out;
}

/** The global addresses of one link, as canonical CIDRs. */
export function globalAddresses(dev: string, link: KLink): Set<string> {
  const out = new Set<string>();
  for (const a of Array.isArray(link.addr_info) ? link.addr_info : []) {
    if (a?.scope !== "global" || typeof a.local !== "string" || typeof a.prefixlen !== "number") continue;
    try {
      out.add(validAddress({ dev, cidr: `${a.local}/${a.prefixlen}` }).cidr);
    } catch {
      /* not something we could have made */
    }
  }
  return out;
}

/** Links with a name; anything else in the output is dropped. */
export function parseLinks(x: unknown): KLink[] {
  return objects(x).filter((l) => typeof l.ifname === "string") as unknown as KLink[];
}

/** Every link with details and addresses (`ip -d addr show`). */
export async function readLinksDetailed(netns?: string): Promise<KLink[]> {
  return parseLinks(await ipJson(["-d", "addr", "show"], netns));
}

/**
 * Links (with details and addresses, as `ip -d addr show`), our routes (`proto`), the neighbours of every device and,
 * with `nexthops`, every nexthop object: one `ip -batch` process instead of six. The routes of both families come
 * from one `route show table all proto P` line (a batch line cannot say -6; without a family and with a table, ip
 * dumps IPv4 only), kept where they are in the main table.
 */
export async function readLinksRoutesNexthops(
  proto: number,
  nexthops: boolean,
  netns?: string,
): Promise<{
  links: KLink[];
  present: Set<string>;
  routes: KRoute[];
  nexthops: KNexthop[] | undefined;
  /** Permanent neighbours of these devices (as `ip neigh show dev D` of each would give). */
  neighsOf(devs: Iterable<string>): Map<string, Neigh[]>;
}> {
  const p = String(proto);
  const cmds = [
    ["addr", "show"],
    ["route", "show", "table", "all", "proto", p],
    ["neigh", "show"],
    ...(nexthops ? [["nexthop", "show"]] : []),
  ];
  const [links, rs, ns, nhs] = ipJsonBatch(["-d"], cmds, netns);
  const [l, a, nb, n] = await Promise.all([links, rs, ns, nhs]);
  const parsed = parseLinks(l);
  const neighs = objects(nb);
  return {
    links: parsed,
    present: new Set(parsed.map((x) => x.ifname)),
    routes: parseMainRoutes(a),
    nexthops: nexthops ? parseNexthops(n) : undefined,
    neighsOf: (devs) => {
      const byDev = new Map<string, Neigh[]>();
      for (const dev of devs) {
        const own = neighs.filter((x) => x.dev === dev);
        byDev.set(dev, parseNeighs(dev, own));
      }
      return byDev;
    },
  };
}

/**
 * `ip -json -d route show table all` output: the main table's routes of both families. -d names every route's table
 * ("main" too); the family is the addresses' (a default route has no prefix to tell: its gateway, or IPv6's "pref").
 */
export function parseMainRoutes(x: unknown): KRoute[] {
  const out: KRoute[] = [];
  for (const r of objects(x)) {
    if (r.table !== undefined && r.table !== "main") continue;
    const v6 =
      (typeof r.dst === "string" && r.dst.includes(":")) || (typeof r.gateway === "string" && r.gateway.includes(":")) || "pref" in r;
    const kr = parseRoute(r, v6 ? 6 : 4);
    if (kr) out.push(kr);
  }
  return out;
}

/** Every nexthop object (`ip -json nexthop show`); throws where the kernel has none (Linux < 5.3). */
export async function readNexthops(netns?: string): Promise<KNexthop[]> {
  return parseNexthops(await ipJson(["nexthop", "show"], netns));
}

/** Permanent FDB remotes per device. */
export async function readFdbs(devs: Iterable<string>, netns?: string): Promise<Map<string, Fdb[]>> {
  const lists = await Promise.all(
    [...devs].map(async (dev) => [dev, parseFdbs(dev, await bridgeJson(["fdb", "show", "dev", dev], netns))] as const),
  );
  return new Map(lists);
}

/**
 * Several `ip -json <flags> <cmd>` reads in one process (`ip -json <flags> -batch -`: one line of output per
 * command). Each result resolves or rejects as `ipJson` of its command would: if the batch fails (a command that
 * fails, an old `ip`), each command is read on its own instead.
 */
export function ipJsonBatch(flags: string[], cmds: string[][], netns?: string): Promise<unknown>[] {
  const all = runIpBatch(flags, cmds, netns).catch(() => null);
  return cmds.map((c, i) => all.then((r) => (r ? r[i] : ipJson([...flags, ...c], netns))));
}

async function runIpBatch(flags: string[], cmds: string[][], netns?: string): Promise<unknown[]> {
  for (const a of [...flags, ...cmds.flat()])
    if (typeof a !== "string" || /[\s"'\\#]/.test(a)) throw new Error(`ip batch argument ${JSON.stringify(a)} is not a plain word`);
  processesSpawned.count++;
  const proc = Bun.spawn(["ip", ...nsArgs(netns), "-json", ...flags, "-batch", "-"], {
    stdin: "pipe",
    stdout: "pipe",
    stderr: "pipe",
    env: process.env,
  });
  await writeChild(proc.stdin, `${cmds.map((c) => c.join(" ")).join("\n")}\n`, false); // a broken pipe shows in the exit status
  await endChild(proc.stdin);
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  const lines = out.split("\n").filter((l) => l.trim() !== "");
  if (code !== 0 || lines.length !== cmds.length) throw new Error(`ip -batch: ${err.trim() || `exit status ${code}`}`);
  return lines.map((l) => JSON.parse(l));
}

/** What the start-up steps read before the agent changes anything: one process instead of one per step. */
export interface StartupKernel {
  /** `ip -d addr show`: links with details and addresses (interface choice, the backend, the device setup). */
  links: Promise<unknown>;
  /** `ip -4 route show table main` (interface choice: the default route's device). */
  routes4: Promise<unknown>;
  /** `ip nexthop show` (whether the kernel has nexthop objects, and ours from a previous run). */
  nexthops: Promise<unknown>;
  /** performance.now() when it was read. */
  at: number;
}

export function readStartupKernel(netns?: string): StartupKernel {
  const [links, routes4, nexthops] = ipJsonBatch(
    ["-d"],
    [
      ["addr", "show"],
      ["route", "show", "table", "main"],
      ["nexthop", "show"],
    ],
    netns,
  );
  // Awaited by whichever step needs each; one a step never takes must not be an unhandled rejection.
  for (const p of [links, routes4, nexthops]) p!.catch(() => {});
  return { links: links!, routes4: routes4!, nexthops: nexthops!, at: performance.now() };
}

/** Every nexthop object in `ip -json nexthop show` output. */
export function parseNexthops(x: unknown): KNexthop[] {
  const out: KNexthop[] = [];
  for (const n of objects(x)) {
    const nh = parseNexthop(n);
    if (nh) out.push(nh);
  }
  return out;
}
