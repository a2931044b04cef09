// Reading the kernel: `ip -json` / `bridge -json` output parsed into the reconciler's typed values. Everything
// here is parsed defensively (the output is checked field by field and validated like store input), and the parse
// functions are pure so they are unit-tested without root.
import type { KLink } from "./device-compat.ts";
import { bridgeJson, ipJson } from "./queue.ts";
import type { Fdb, Neigh } from "./types.ts";
import { validAddress, validDevName, validFdb, validIP, validNeigh, validNet, validNexthopId } from "./validate.ts";

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

/** Link names present (`ip link show`). */
export async function readLinkNames(netns?: string): Promise<Set<string>> {
  return new Set(parseLinks(await ipJson(["link", "show"], netns)).map((l) => l.ifname));
}

/** IPv4 and IPv6 routes of the main table carrying protocol `proto`. */
export async function readRoutes(proto: number, netns?: string): Promise<KRoute[]> {
  const p = String(proto);
  const [r4, r6] = await Promise.all([
    ipJson(["-4", "route", "show", "table", "main", "proto", p], netns),
    ipJson(["-6", "route", "show", "table", "main", "proto", p], netns),
  ]);
  const out: KRoute[] = [];
  for (const r of objects(r4)) {
    const kr = parseRoute(r, 4);
    if (kr) out.push(kr);
  }
  for (const r of objects(r6)) {
    const kr = parseRoute(r, 6);
    if (kr) out.push(kr);
  }
  return out;
}

/** Every nexthop object (`ip -json nexthop show`); throws where the kernel has none (Linux < 5.3). */
export async function readNexthops(netns?: string): Promise<KNexthop[]> {
  const out: KNexthop[] = [];
  for (const n of objects(await ipJson(["nexthop", "show"], netns))) {
    const nh = parseNexthop(n);
    if (nh) out.push(nh);
  }
  return out;
}

/** Permanent neighbours per device. */
export async function readNeighs(devs: Iterable<string>, netns?: string): Promise<Map<string, Neigh[]>> {
  const lists = await Promise.all(
    [...devs].map(async (dev) => [dev, parseNeighs(dev, await ipJson(["neigh", "show", "dev", dev], netns))] as const),
  );
  return new Map(lists);
}

/** Permanent FDB remotes per device. */
export async function readFdbs(devs: Iterable<string>, netns?: string): Promise<Map<string, Fdb[]>> {
  const lists = await Promise.all(
    [...devs].map(async (dev) => [dev, parseFdbs(dev, await bridgeJson(["fdb", "show", "dev", dev], netns))] as const),
  );
  return new Map(lists);
}
