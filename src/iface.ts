// External interface selection, IPv4 (docs/flannel-compat.md §9: flanneld main.go + pkg/ipmatch). The decision is pure
// (selectInterface over parsed `ip -json` output) so it is testable without a kernel; chooseExternalInterface
// only reads the kernel and delegates.
import type { ExternalInterface } from "../backends/backend.ts";
import { formatIP, type IPNet, mask, netEqual, parseIP } from "./ipmath.ts";
import { ipJson } from "./kernel/queue.ts";

export class IfaceError extends Error {
  /** For "no match": why each --iface / --iface-regex entry failed. */
  constructor(
    message: string,
    readonly notes: string[] = [],
  ) {
    super(message);
  }
}

export interface SelectOptions {
  /** --iface values, tried in order: an IP selects the interface owning it (and that IP), else a name. */
  iface?: string[];
  /** --iface-regex values, tried in order (unanchored; addresses first, then names). */
  ifaceRegex?: string[];
  /** --public-ip. */
  publicIP?: string;
  /** --iface-can-reach: the interface and source address of the route to this IP (tried after --iface and regexes). */
  ifaceCanReach?: string;
}

export interface ChooseOptions extends SelectOptions {
  /** Read addresses and routes inside this network namespace (tests, lab). */
  netns?: string;
  /** Addresses and main-table IPv4 routes already being read (the agent's start-up read): not read again. */
  read?: { links: Promise<unknown>; routes4: Promise<unknown> };
}

/** One IPv4 address of a link, as `ip -json addr show` reports it (only the fields we use). */
export interface LinkAddr {
  local: string;
  prefixlen: number;
  dynamic: boolean;
  deprecated: boolean;
}

export interface Link {
  ifindex: number;
  ifname: string;
  mtu: number;
  /** IPv4 addresses in kernel order. */
  addrs: LinkAddr[];
}

export interface DefaultRouteInfo {
  dst: string;
  dev?: string;
}

const isObj = (v: unknown): v is Record<string, unknown> => !!v && typeof v === "object" && !Array.isArray(v);

/** Parses `ip -json addr show` output; entries that are not well-formed links are skipped. */
export function parseIpAddr(json: unknown): Link[] {
  if (!Array.isArray(json)) throw new IfaceError("ip -json addr show: output is not a JSON array");
  const links: Link[] = [];
  for (const l of json) {
    if (!isObj(l) || typeof l.ifname !== "string" || typeof l.ifindex !== "number") continue;
    const addrs: LinkAddr[] = [];
    for (const a of Array.isArray(l.addr_info) ? l.addr_info : []) {
      if (!isObj(a) || a.family !== "inet" || typeof a.local !== "string" || typeof a.prefixlen !== "number") continue;
      if (parseIP(a.local)?.family !== 4 || !Number.isInteger(a.prefixlen) || a.prefixlen < 0 || a.prefixlen > 32) continue;
      addrs.push({
        local: a.local,
        prefixlen: a.prefixlen,
        dynamic: a.dynamic === true,
        // IPv4 has no DAD; "deprecated" means preferred_lft 0.
        deprecated: a.deprecated === true || a.preferred_life_time === 0,
      });
    }
    links.push({ ifindex: l.ifindex, ifname: l.ifname, mtu: typeof l.mtu === "number" ? l.mtu : 0, addrs });
  }
  return links;
}

/** Parses `ip -json route show` output (main table). */
export function parseIpRoute(json: unknown): DefaultRouteInfo[] {
  if (!Array.isArray(json)) throw new IfaceError("ip -json route show: output is not a JSON array");
  const out: DefaultRouteInfo[] = [];
  for (const r of json) {
    if (!isObj(r) || typeof r.dst !== "string") continue;
    out.push(typeof r.dev === "string" ? { dst: r.dst, dev: r.dev } : { dst: r.dst });
  }
  return out;
}

type AddrClass = "global" | "linklocal" | null;

/** Go's IsGlobalUnicast / IsLinkLocalUnicast for IPv4. */
function classify(ip: string): AddrClass {
  const v = parseIP(ip);
  if (v?.family !== 4) return null;
  const x = v.value;
  if (x === 0n || x === 0xffffffffn || x >> 24n === 127n || x >> 28n === 0xen) return null;
  if (x >> 16n === 0xa9fen) return "linklocal";
  return "global";
}

/** flannel's candidate addresses: global or link-local unicast, not deprecated; global first, then permanent first. */
export function candidateAddrs(link: Link): string[] {
  const rank = (a: LinkAddr) => (classify(a.local) === "global" ? 0 : 2) + (a.dynamic ? 1 : 0);
  return link.addrs
    .filter((a) => !a.deprecated && classify(a.local) !== null)
    .map((a, i) => ({ a, i }))
    .sort((x, y) => rank(x.a) - rank(y.a) || x.i - y.i) // stable: kernel order breaks ties
    .map((x) => x.a.local);
}

/** Connected IPv4 networks of a link (from each address's prefix length), deduplicated. */
export function connectedNets(link: Link): IPNet[] {
  const nets: IPNet[] = [];
  for (const a of link.addrs) {
    const ip = parseIP(a.local)!;
    const n: IPNet = { family: 4, ip: ip.value & mask(a.prefixlen, 4), prefix: a.prefixlen };
    if (!nets.some((m) => netEqual(m, n))) nets.push(n);
  }
  return nets;
}

const sameIP = (a: string, b: string): boolean => {
  const x = parseIP(a);
  const y = parseIP(b);
  return !!x && !!y && x.family === y.family && x.value === y.value;
};

type Found = { link: Link; addr: string };

/** --iface-can-reach: the device of `ip -json route get <ip>` and its preferred source (else the device's address). */
function linkReaching(links: Link[], routeGetJson: unknown, ip: string): Found {
  const r = Array.isArray(routeGetJson) ? routeGetJson[0] : undefined;
  if (!isObj(r) || typeof r.dev !== "string") throw new IfaceError(`no route to ${ip}`);
  const link = links.find((x) => x.ifname === r.dev);
  if (!link) throw new IfaceError(`the route to ${ip} uses ${r.dev}, which has no IPv4 address`);
  const src = typeof r.prefsrc === "string" && parseIP(r.prefsrc)?.family === 4 ? formatIP(parseIP(r.prefsrc)!.value, 4) : undefined;
  const addr = src ?? candidateAddrs(link)[0];
  if (!addr) throw new IfaceError(`failed to find IPv4 address for interface ${link.ifname}`);
  return { link, addr };
}

function linkOwningIP(links: Link[], ip: string): Found {
  const canon = formatIP(parseIP(ip)!.value, 4);
  for (const l of links) if (l.addrs.some((a) => sameIP(a.local, canon))) return { link: l, addr: canon };
  throw new IfaceError(`error looking up interface ${ip}: no interface with that IP address`);
}

function linkByName(links: Link[], name: string): Found {
  const l = links.find((x) => x.ifname === name);
  if (!l) throw new IfaceError(`error looking up interface ${name}: no such interface`);
  const addr = candidateAddrs(l)[0];
  if (!addr) throw new IfaceError(`failed to find IPv4 address for interface ${name}`);
  return { link: l, addr };
}

function linkByRegex(links: Link[], pattern: string): Found {
  let re: RegExp;
  try {
    re = new RegExp(pattern);
  } catch (e) {
    throw new IfaceError(`invalid interface regex ${JSON.stringify(pattern)}: ${(e as Error).message}`);
  }
  // Pass 1: addresses, in kernel interface order.
  for (const l of links) for (const a of candidateAddrs(l)) if (re.test(a)) return { link: l, addr: a };
  // Pass 2: names.
  for (const l of links) {
    if (!re.test(l.ifname)) continue;
    const addr = candidateAddrs(l)[0];
    if (addr) return { link: l, addr };
  }
  throw new IfaceError(
    `Could not match pattern ${pattern} to any of the available network interfaces (${links.map((l) => l.ifname).join(", ")})`,
  );
}

function defaultRouteLink(links: Link[], routes: DefaultRouteInfo[]): Found {
  const r = routes.find((x) => (x.dst === "default" || x.dst === "0.0.0.0/0") && x.dev);
  if (!r) throw new IfaceError("failed to get default interface: Unable to find default route");
  return linkByName(links, r.dev!);
}

export interface Selection {
  iface: ExternalInterface;
  publicIP: string;
  /** Why earlier --iface / --iface-regex entries failed, for the caller's log (flannel logs these at info level). */
  notes: string[];
}

/**
 * The whole decision of docs/flannel-compat.md §9 (IPv4), over the JSON of `ip -json addr show` and
 * `ip -json -4 route show table main`. Throws IfaceError with flannel's messages.
 */
export function selectInterface(addrsJson: unknown, routesJson: unknown, opts: SelectOptions, routeGetJson?: unknown): Selection {
  const links = parseIpAddr(addrsJson);
  const routes = parseIpRoute(routesJson);
  const ifaces = opts.iface ?? [];
  const regexes = opts.ifaceRegex ?? [];
  const notes: string[] = [];

  if (opts.publicIP !== undefined && opts.publicIP !== "" && parseIP(opts.publicIP)?.family !== 4)
    throw new IfaceError(`invalid public IP address: ${opts.publicIP}`);

  const canReach = opts.ifaceCanReach || undefined;
  if (canReach !== undefined && parseIP(canReach)?.family !== 4) throw new IfaceError(`invalid --iface-can-reach address: ${canReach}`);

  let found: Found | null = null;
  if (ifaces.length === 0 && regexes.length === 0 && canReach === undefined) {
    try {
      found = opts.publicIP ? linkOwningIP(links, opts.publicIP) : defaultRouteLink(links, routes);
    } catch (e) {
      throw new IfaceError(`Failed to find any valid interface to use: ${(e as Error).message}`);
    }
  } else {
    for (const v of ifaces) {
      try {
        const ip = parseIP(v);
        if (ip && ip.family !== 4) throw new IfaceError(`${v} is not an IPv4 address`);
        found = ip ? linkOwningIP(links, v) : linkByName(links, v);
        break;
      } catch (e) {
        notes.push(`Could not find valid interface matching ${v}: ${(e as Error).message}`);
      }
    }
    for (const p of found ? [] : regexes) {
      try {
        found = linkByRegex(links, p);
        break;
      } catch (e) {
        notes.push(`Could not find valid interface matching ${p}: ${(e as Error).message}`);
      }
    }
    if (!found && canReach !== undefined) {
      try {
        found = linkReaching(links, routeGetJson, canReach);
      } catch (e) {
        notes.push(`Could not find valid interface reaching ${canReach}: ${(e as Error).message}`);
      }
    }
    if (!found) {
      throw new IfaceError("Failed to find interface to use that matches the interfaces and/or regexes provided", notes);
    }
  }

  const { link, addr } = found;
  if (!Number.isInteger(link.mtu) || link.mtu <= 0) throw new IfaceError(`failed to determine MTU for ${addr} interface`);
  const publicIP = opts.publicIP ? formatIP(parseIP(opts.publicIP)!.value, 4) : addr;
  return {
    iface: { name: link.ifname, index: link.ifindex, mtu: link.mtu, ipv4: addr, ipv4Nets: connectedNets(link) },
    publicIP,
    notes,
  };
}

/** Reads the kernel's addresses and main-table IPv4 routes (optionally in a netns) and selects the interface. */
export async function chooseExternalInterface(opts: ChooseOptions): Promise<Selection> {
  const reach = opts.ifaceCanReach && parseIP(opts.ifaceCanReach)?.family === 4 ? formatIP(parseIP(opts.ifaceCanReach)!.value, 4) : null;
  const [addrs, routes, routeGet] = await Promise.all([
    opts.read?.links ?? ipJson(["addr", "show"], opts.netns),
    opts.read?.routes4 ?? ipJson(["-4", "route", "show", "table", "main"], opts.netns),
    reach ? ipJson(["route", "get", reach], opts.netns).catch(() => []) : Promise.resolve(undefined),
  ]);
  return selectInterface(addrs, routes, opts, routeGet);
}
