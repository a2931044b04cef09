// Validators every value passes through before it becomes a word on an iproute2 command line. Each returns the
// value in canonical form (the form `ip -json` prints back), so the reconciler's keys match what the kernel reports,
// and throws a ValidationError naming the field and the offending value.
import { formatCIDR, formatIP, ipv4Number, parseIP, tryParseCIDR, type Family } from "../ipmath.ts";
import type { Address, Fdb, Neigh, Nexthop, Route, VxlanDevice } from "./types.ts";

export class ValidationError extends Error {
  override name = "ValidationError";
}

const show = (v: unknown): string => {
  try {
    const s = JSON.stringify(v);
    return s === undefined ? String(v) : s.length > 80 ? `${s.slice(0, 77)}...` : s;
  } catch {
    return String(v);
  }
};

function fail(field: string, value: unknown, why: string): never {
  throw new ValidationError(`invalid ${field} ${show(value)}: ${why}`);
}

/** IFNAMSIZ is 16 including the NUL byte. */
export const MAX_IFNAME = 15;
const IFNAME = /^[A-Za-z0-9._-]{1,15}$/;

export function validDevName(v: unknown, field = "device name"): string {
  if (typeof v !== "string") fail(field, v, "not a string");
  if (!IFNAME.test(v)) fail(field, v, `must be 1-${MAX_IFNAME} characters of [A-Za-z0-9._-]`);
  if (v === "." || v === "..") fail(field, v, "reserved name");
  return v;
}

/** Canonical "a.b.c.d/n" and whether its host bits are zero; null if it is not that shape. */
function canonV4Cidr(s: string): { aligned: boolean } | null {
  const slash = s.indexOf("/");
  if (slash < 0) return null;
  const ip = ipv4Number(s, slash);
  if (ip < 0) return null;
  const p = s.slice(slash + 1);
  if (!/^(?:3[0-2]|[12]?[0-9])$/.test(p)) return null;
  const prefix = Number(p);
  return { aligned: prefix === 32 || ip % 2 ** (32 - prefix) === 0 };
}

/** An IPv4 or IPv6 address, canonical (IPv6 compressed per RFC 5952, lower-case). */
export function validIP(v: unknown, field = "IP address", family?: Family): string {
  if (typeof v !== "string") fail(field, v, "not a string");
  if (ipv4Number(v) >= 0) {
    if (family === 6) fail(field, v, "not an IPv6 address");
    return v;
  }
  const ip = parseIP(v);
  if (!ip) fail(field, v, "not an IP address");
  if (family && ip.family !== family) fail(field, v, `not an IPv${family} address`);
  return formatIP(ip.value, ip.family);
}

/** A network (host bits zero), canonical "a.b.c.d/n". Host bits set is an error, never silently masked. */
export function validNet(v: unknown, field = "network"): string {
  if (typeof v !== "string") fail(field, v, "not a string");
  const c4 = canonV4Cidr(v);
  if (c4) {
    if (!c4.aligned) fail(field, v, "host bits set");
    return v;
  }
  const slash = v.indexOf("/");
  const net = tryParseCIDR(v);
  if (!net) fail(field, v, "not a CIDR");
  const ip = parseIP(v.slice(0, slash))!;
  if (ip.value !== net.ip) fail(field, v, "host bits set");
  return formatCIDR(net);
}

/** An interface address with its prefix ("10.5.52.1/24"): host bits are meaningful and kept. */
export function validIfAddr(v: unknown, field = "interface address"): string {
  if (typeof v !== "string") fail(field, v, "not a string");
  if (canonV4Cidr(v)) return v;
  const slash = v.indexOf("/");
  if (slash < 0 || !tryParseCIDR(v)) fail(field, v, "not ADDRESS/PREFIX");
  const ip = parseIP(v.slice(0, slash))!;
  return `${formatIP(ip.value, ip.family)}${v.slice(slash)}`;
}

const MAC = /^[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}$/;

/** 6 hex octets separated by colons; returned lower-case (as the kernel prints it). */
export function validMAC(v: unknown, field = "MAC address"): string {
  if (typeof v !== "string" || !MAC.test(v)) fail(field, v, "must be 6 hex octets like 0a:1b:2c:3d:4e:5f");
  return v.toLowerCase();
}

export function validInt(v: unknown, min: number, max: number, field: string): number {
  if (typeof v !== "number" || !Number.isInteger(v)) fail(field, v, "not an integer");
  if (v < min || v > max) fail(field, v, `out of range ${min}..${max}`);
  return v;
}

export const validVNI = (v: unknown, field = "VNI"): number => validInt(v, 0, 16777215, field);
export const validPort = (v: unknown, field = "port"): number => validInt(v, 0, 65535, field);
export const validMTU = (v: unknown, field = "MTU"): number => validInt(v, 68, 65535, field);
/** Route protocol number (rtm_protocol is a u8). */
export const validProto = (v: unknown, field = "route protocol"): number => validInt(v, 0, 255, field);

/** Nexthop object id (a u32; 0 means "none" to the kernel). */
export const validNexthopId = (v: unknown, field = "nexthop id"): number => validInt(v, 1, 0xffffffff, field);

function validBool(v: unknown, field: string): boolean {
  if (typeof v !== "boolean") fail(field, v, "not a boolean");
  return v;
}

function isObject(v: unknown, field: string): asserts v is Record<string, unknown> {
  if (typeof v !== "object" || v === null) fail(field, v, "not an object");
}

// Whole-value validators: return a canonical, frozen copy, so two spellings of one entry compare equal. The copies are
// remembered, so a value validated once (by the reconciler's set()) is not checked again by the command builder: this
// halves the per-peer cost on the 10,000-peer path. Freezing keeps a remembered value from changing afterwards.
// With `id` (the reconciler's set(), diff.ts) the copy also names the fragment that desires it: one object per
// desired entry instead of a value plus an owner record (10,000 peers: 30,000 objects fewer).
// A remembered value is an instance of Checked, a class no store text or spread copy can produce: the check is the
// prototype, not a WeakSet entry per value (40,000 of them at 10k peers: 1 MB).
class Checked {}
const canonical = { has: (v: object): boolean => v instanceof Checked };
function remember<T extends object>(v: T, id?: string): T {
  const c = Object.assign(new Checked(), v) as T;
  if (id !== undefined) (c as T & { id: string }).id = id;
  return Object.freeze(c);
}

export function validRoute(r: unknown, id?: string): Route {
  if (id === undefined && typeof r === "object" && r !== null && canonical.has(r)) return r as Route;
  isObject(r, "route");
  const dst = validNet(r.dst, "route dst");
  const via = validIP(r.via, "route via");
  if (dst.includes(":") !== via.includes(":")) fail("route via", r.via, `family differs from dst ${dst}`);
  return remember({ dst, via, dev: validDevName(r.dev, "route dev"), onlink: validBool(r.onlink, "route onlink") }, id);
}

export function validNexthop(n: unknown): Nexthop {
  if (typeof n === "object" && n !== null && canonical.has(n)) return n as Nexthop;
  isObject(n, "nexthop");
  const via = validIP(n.via, "nexthop via");
  return remember({
    id: validNexthopId(n.id),
    via,
    dev: validDevName(n.dev, "nexthop dev"),
    onlink: validBool(n.onlink, "nexthop onlink"),
  });
}

/** Nexthop `id` for the gateway, device and onlink flag of a route (validated once: no second check of the route). */
export function nexthopOf(id: number, route: Route): Nexthop {
  const r = validRoute(route);
  return remember({ id: validNexthopId(id), via: r.via, dev: r.dev, onlink: r.onlink });
}

export function validNeigh(n: unknown, id?: string): Neigh {
  if (id === undefined && typeof n === "object" && n !== null && canonical.has(n)) return n as Neigh;
  isObject(n, "neighbour");
  return remember(
    {
      dev: validDevName(n.dev, "neighbour dev"),
      ip: validIP(n.ip, "neighbour ip"),
      lladdr: validMAC(n.lladdr, "neighbour lladdr"),
    },
    id,
  );
}

export function validFdb(f: unknown, id?: string): Fdb {
  if (id === undefined && typeof f === "object" && f !== null && canonical.has(f)) return f as Fdb;
  isObject(f, "fdb entry");
  return remember(
    {
      dev: validDevName(f.dev, "fdb dev"),
      mac: validMAC(f.mac, "fdb mac"),
      dst: validIP(f.dst, "fdb dst"),
    },
    id,
  );
}

export function validAddress(a: unknown, id?: string): Address {
  if (id === undefined && typeof a === "object" && a !== null && canonical.has(a)) return a as Address;
  isObject(a, "address");
  return remember({ dev: validDevName(a.dev, "address dev"), cidr: validIfAddr(a.cidr, "address cidr") }, id);
}

export function validVxlanDevice(d: unknown, id?: string): VxlanDevice {
  if (id === undefined && typeof d === "object" && d !== null && canonical.has(d)) return d as VxlanDevice;
  isObject(d, "device");
  if (d.kind !== "vxlan") fail("device kind", d.kind, 'only "vxlan" is supported');
  return remember(
    {
      kind: "vxlan",
      name: validDevName(d.name, "vxlan name"),
      vni: validVNI(d.vni, "vxlan VNI"),
      local: validIP(d.local, "vxlan local"),
      underlay: validDevName(d.underlay, "vxlan underlay"),
      port: validPort(d.port, "vxlan port"),
      learning: validBool(d.learning, "vxlan learning"),
      gbp: validBool(d.gbp, "vxlan gbp"),
      mtu: validMTU(d.mtu, "vxlan MTU"),
      mac: validMAC(d.mac, "vxlan MAC"),
    },
    id,
  );
}
