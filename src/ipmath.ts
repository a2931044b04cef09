// IP math for IPv4 and IPv6 in one representation: the address as a bigint plus its family.
// bigint keeps IPv4 and IPv6 on one code path; the hot paths (10k peers) are far from its cost.

export type Family = 4 | 6;

export interface IP {
  family: Family;
  value: bigint;
}

/** A CIDR whose host bits are always zero (parse masks them off, as Go's net.ParseCIDR does). */
export interface IPNet {
  family: Family;
  ip: bigint;
  prefix: number;
}

export const bits = (f: Family): number => (f === 4 ? 32 : 128);
const maxValue = (f: Family): bigint => (1n << BigInt(bits(f))) - 1n;

export class IPParseError extends Error {}

const V4_OCTET = /^(0|[1-9][0-9]{0,2})$/; // no leading zeros: "010" is ambiguous (octal in some parsers)

function parseV4(s: string): bigint | null {
  const parts = s.split(".");
  if (parts.length !== 4) return null;
  let v = 0; // a double holds 32 bits exactly; one BigInt at the end (this runs several times per peer)
  for (const p of parts) {
    if (!V4_OCTET.test(p)) return null;
    const n = Number(p);
    if (n > 255) return null;
    v = v * 256 + n;
  }
  return BigInt(v);
}

function parseV6(s: string): bigint | null {
  if (s.length === 0 || s.length > 45 || !/^[0-9a-fA-F:.]+$/.test(s)) return null;
  let tail: bigint | null = null;
  let body = s;
  const lastColon = s.lastIndexOf(":");
  if (s.includes(".")) {
    // Embedded IPv4 in the last 32 bits, e.g. ::ffff:1.2.3.4
    tail = parseV4(s.slice(lastColon + 1));
    if (tail === null) return null;
    body = `${s.slice(0, lastColon + 1)}0:0`;
  }
  const halves = body.split("::");
  if (halves.length > 2) return null;
  const groups = (h: string): string[] | null => {
    if (h === "") return [];
    const g = h.split(":");
    for (const x of g) if (!/^[0-9a-fA-F]{1,4}$/.test(x)) return null;
    return g;
  };
  const left = groups(halves[0]!);
  const right = halves.length === 2 ? groups(halves[1]!) : [];
  if (!left || !right) return null;
  const total = left.length + right.length;
  if (halves.length === 2 ? total > 7 : total !== 8) return null;
  const all = [...left, ...Array(8 - total).fill("0"), ...right];
  let v = 0n;
  for (const g of all) v = (v << 16n) | BigInt(parseInt(g, 16));
  if (tail !== null) v = (v & ~0xffffffffn) | tail;
  return v;
}

// Canonical dotted quad (no leading zeros) and its number, or -1: the common case, checked by hand without regex
// or bigint work because the hot path (10,000 peers x 3 entries) validates every address (and the reconciler keys entries by it, src/kernel/keys.ts).
export function ipv4Number(s: string, end = s.length): number {
  if (end < 7 || end > 15) return -1;
  let n = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || ++dots > 3) return -1;
      n = n * 256 + part;
      part = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      if (digits === 1 && part === 0) return -1; // leading zero
      part = part * 10 + (c - 48);
      if (++digits > 3 || part > 255) return -1;
    } else return -1;
  }
  if (digits === 0 || dots !== 3) return -1;
  return n * 256 + part;
}

/** Parses an IPv4 or IPv6 address; null if it is not one. */
export function parseIP(s: string): IP | null {
  if (typeof s !== "string") return null;
  if (s.includes(":")) {
    const v = parseV6(s);
    return v === null ? null : { family: 6, value: v };
  }
  const v = parseV4(s);
  return v === null ? null : { family: 4, value: v };
}

export function parseIPv4(s: string): bigint | null {
  const ip = parseIP(s);
  return ip && ip.family === 4 ? ip.value : null;
}

export function formatIP(value: bigint, family: Family): string {
  if (family === 4) {
    const n = value >= 0n && value <= 0xffffffffn ? Number(value) : Number(value & 0xffffffffn); // no bigint made when in range
    return `${Math.floor(n / 16777216)}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
  }
  const g: number[] = [];
  for (let i = 7; i >= 0; i--) g.push(Number((value >> BigInt(i * 16)) & 0xffffn));
  // RFC 5952 (and Go): compress the longest run of two or more zero groups, the first on a tie.
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (xs: number[]) => xs.map((x) => x.toString(16)).join(":");
  if (bestStart < 0) return hex(g);
  return `${hex(g.slice(0, bestStart))}::${hex(g.slice(bestStart + bestLen))}`;
}

export const ipString = (ip: IP): string => formatIP(ip.value, ip.family);

export function mask(prefix: number, family: Family): bigint {
  const b = BigInt(bits(family));
  return prefix === 0 ? 0n : (maxValue(family) >> (b - BigInt(prefix))) << (b - BigInt(prefix));
}

/** Parses "a.b.c.d/n" or "x::/n"; host bits are masked off. Throws IPParseError naming the input. */
export function parseCIDR(s: string): IPNet {
  const net = tryParseCIDR(s);
  if (!net) throw new IPParseError(`invalid CIDR address: ${s}`);
  return net;
}

export function tryParseCIDR(s: string): IPNet | null {
  if (typeof s !== "string") return null;
  const slash = s.indexOf("/");
  if (slash < 0) return null;
  const ip = parseIP(s.slice(0, slash));
  const p = s.slice(slash + 1);
  if (!ip || !/^(0|[1-9][0-9]{0,2})$/.test(p)) return null;
  const prefix = Number(p);
  if (prefix > bits(ip.family)) return null;
  return { family: ip.family, ip: ip.value & mask(prefix, ip.family), prefix };
}

export const formatCIDR = (n: IPNet): string => `${formatIP(n.ip, n.family)}/${n.prefix}`;

export const netSize = (n: IPNet): bigint => 1n << BigInt(bits(n.family) - n.prefix);

/** Last address in the network (the broadcast address for IPv4). */
export const lastIP = (n: IPNet): bigint => n.ip + netSize(n) - 1n;

export function containsIP(n: IPNet, ip: IP | bigint): boolean {
  const v = typeof ip === "bigint" ? ip : ip.family === n.family ? ip.value : -1n;
  return v >= n.ip && v <= lastIP(n);
}

export const containsNet = (outer: IPNet, inner: IPNet): boolean =>
  outer.family === inner.family && inner.prefix >= outer.prefix && containsIP(outer, inner.ip);

/** Two networks overlap when they are equal under the shorter of the two masks (flannel's rule). */
export const overlaps = (a: IPNet, b: IPNet): boolean => a.family === b.family && (containsIP(a, b.ip) || containsIP(b, a.ip));

export const netEqual = (a: IPNet, b: IPNet): boolean => a.family === b.family && a.ip === b.ip && a.prefix === b.prefix;

/** The next network of the same size, or null past the end of the address space. */
export function nextSubnet(n: IPNet): IPNet | null {
  const next = n.ip + netSize(n);
  return next > maxValue(n.family) ? null : { ...n, ip: next };
}

export const isAligned = (ip: bigint, prefix: number, family: Family): boolean => (ip & ~mask(prefix, family) & maxValue(family)) === 0n;
