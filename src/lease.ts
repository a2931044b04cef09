// Lease records: flannel's subnet keys and lease JSON, encoded byte-for-byte as flanneld writes them and decoded
// defensively, because a store record is untrusted input (another host, an operator, or an attacker wrote it).

import { type IPNet, formatCIDR, formatIP, ipv4Number, parseIP, tryParseCIDR } from "./ipmath.ts";
import { escapeLogText, logText } from "./log-text.ts";
import { MAX_VALUE_BYTES, SUBNETS_PREFIX } from "./store.ts";

export interface LeaseAttrs {
  /** IPv4 underlay address of the host ("0.0.0.0" if unset, as flannel writes it). */
  publicIP: string;
  publicIPv6: string | null;
  /** "vxlan", "host-gw", or whatever another flannel node wrote (then ignored by our backends). */
  backendType: string;
  /** Backend-specific JSON, e.g. vxlan {"VNI":1,"VtepMAC":"…"}; undefined if absent. Validated by the backend. */
  backendData?: unknown;
  backendV6Data?: unknown;
}

export interface Lease {
  subnet: IPNet;
  ipv6Subnet: IPNet | null;
  attrs: LeaseAttrs;
  /** Epoch ms; null for a reservation (a record with no expiry). */
  expiresAt: number | null;
  /** Store revision of the record: renewal is compare-and-set on it. */
  revision: number;
  /** Store revision at which the record was created (older wins a conflict); absent: use `revision`. */
  createRevision?: number;
}

export class LeaseRecordError extends Error {}

/** "subnets/10.5.52.0-24" or "subnets/10.5.52.0-24&fc00:0:0:34::-64". */
export function subnetKey(subnet: IPNet, ipv6Subnet: IPNet | null = null): string {
  let k = `${SUBNETS_PREFIX}${formatIP(subnet.ip, 4)}-${subnet.prefix}`;
  if (ipv6Subnet) k += `&${formatIP(ipv6Subnet.ip, 6)}-${ipv6Subnet.prefix}`;
  return k;
}

const KEY_RE = /^(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})-(\d{1,2})(?:&([0-9a-f:]+)-(\d{1,3}))?$/;

/** Parses a subnet key (with or without the "subnets/" prefix); null if it is not a valid one. */
export function parseSubnetKey(key: string): { subnet: IPNet; ipv6Subnet: IPNet | null } | null {
  const name = key.startsWith(SUBNETS_PREFIX) ? key.slice(SUBNETS_PREFIX.length) : key;
  const v4 = parseV4Key(name);
  if (v4) return { subnet: v4, ipv6Subnet: null };
  const m = KEY_RE.exec(name);
  if (!m) return null;
  // flannel: IPv4 prefix must fit 5 bits (0-31), IPv6 7 bits (0-127).
  if (Number(m[2]) > 31) return null;
  const subnet = tryParseCIDR(`${m[1]}/${m[2]}`);
  if (subnet?.family !== 4 || formatCIDR(subnet) !== `${m[1]}/${m[2]}`) return null;
  let ipv6Subnet: IPNet | null = null;
  if (m[3] !== undefined) {
    if (Number(m[4]) > 127) return null;
    ipv6Subnet = tryParseCIDR(`${m[3]}/${m[4]}`);
    // Only the canonical form (as flannel writes it): one subnet must have exactly one key.
    if (ipv6Subnet?.family !== 6 || formatCIDR(ipv6Subnet) !== `${m[3]}/${m[4]}`) return null;
  }
  return { subnet, ipv6Subnet };
}

/**
 * The common key, IPv4 only and canonical ("10.5.52.0-24"), without regex or bigint work (10,000 keys in a list);
 * null sends anything else through the full parse, which decides.
 */
function parseV4Key(name: string): IPNet | null {
  const dash = name.indexOf("-");
  const ip = dash > 0 ? ipv4Number(name, dash) : -1;
  if (ip < 0 || name.length - dash < 2 || name.length - dash > 3) return null;
  let prefix = 0;
  for (let i = dash + 1; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c < 48 || c > 57 || (i === dash + 1 && c === 48 && name.length - dash > 2)) return null;
    prefix = prefix * 10 + c - 48;
  }
  if (prefix > 31 || ip % 2 ** (32 - prefix) !== 0) return null;
  return { family: 4, ip: BigInt(ip), prefix };
}

/** Encodes lease attrs exactly as flanneld's LeaseAttrs JSON: field order, null PublicIPv6, omitted empties. */
export function encodeLeaseAttrs(a: LeaseAttrs): Uint8Array {
  const o: Record<string, unknown> = { PublicIP: a.publicIP || "0.0.0.0", PublicIPv6: a.publicIPv6 ?? null };
  if (a.backendType) o.BackendType = a.backendType;
  if (a.backendData !== undefined && a.backendData !== null) o.BackendData = a.backendData;
  if (a.backendV6Data !== undefined && a.backendV6Data !== null) o.BackendV6Data = a.backendV6Data;
  return new TextEncoder().encode(JSON.stringify(o));
}

const MAX_RECORD_BYTES = MAX_VALUE_BYTES;
/** One decoder for every record (a whole-buffer decode() keeps no state between calls). */
const UTF8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Decodes a lease value as Go's encoding/json would (keys case-insensitive, unknown keys ignored) and validates
 * every field that can reach the kernel. Throws LeaseRecordError naming the problem.
 */
export function decodeLeaseAttrs(value: Uint8Array): LeaseAttrs {
  if (value.byteLength > MAX_RECORD_BYTES)
    throw new LeaseRecordError(`lease record is ${value.byteLength} bytes (limit ${MAX_RECORD_BYTES})`);
  let raw: unknown;
  try {
    raw = JSON.parse(UTF8.decode(value));
  } catch (e) {
    throw new LeaseRecordError(`lease record is not valid JSON: ${escapeLogText((e as Error).message)}`);
  }
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) throw new LeaseRecordError("lease record is not a JSON object");
  const f = foldKeys(raw as Record<string, unknown>);
  const publicIP = f.publicip ?? "0.0.0.0";
  if (typeof publicIP !== "string" || (ipv4Number(publicIP) < 0 && parseIP(publicIP)?.family !== 4))
    throw new LeaseRecordError(`lease PublicIP is not an IPv4 address: ${logText(publicIP)}`);
  const v6 = f.publicipv6 ?? null;
  if (v6 !== null && (typeof v6 !== "string" || parseIP(v6)?.family !== 6))
    throw new LeaseRecordError(`lease PublicIPv6 is not an IPv6 address: ${logText(v6)}`);
  const bt = f.backendtype ?? "";
  if (typeof bt !== "string" || bt.length > 64) throw new LeaseRecordError(`lease BackendType is not a short string: ${logText(bt)}`);
  // The usual type is one shared string, not a copy per record.
  const backendType = bt === "vxlan" ? "vxlan" : bt === "host-gw" ? "host-gw" : bt;
  const attrs: LeaseAttrs = { publicIP: canonicalIP(publicIP), publicIPv6: v6 === null ? null : canonicalIP(v6), backendType };
  if (f.backenddata !== undefined && f.backenddata !== null) attrs.backendData = f.backenddata;
  if (f.backendv6data !== undefined && f.backendv6data !== null) attrs.backendV6Data = f.backendv6data;
  return attrs;
}

const canonicalIP = (s: string): string => {
  if (ipv4Number(s) >= 0) return s; // already canonical: no second copy
  const ip = parseIP(s)!;
  return formatIP(ip.value, ip.family);
};

/**
 * Go's encoding/json matches keys case-insensitively; the last duplicate wins as in Go. The result has no
 * prototype, so a hostile "__proto__" key is a plain (ignored) field and can never supply values through it.
 */
export function foldKeys(o: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = Object.create(null);
  for (const k of Object.keys(o)) out[FOLDED[k] ?? k.toLowerCase()] = o[k];
  return out;
}

/** foldKeys(o)[name] (`name` lower-case) without building the folded copy: the last key that folds to it wins. */
export function fieldFolded(o: Record<string, unknown>, name: string): unknown {
  let v: unknown;
  for (const k in o) if (Object.hasOwn(o, k) && (FOLDED[k] ?? k.toLowerCase()) === name) v = o[k];
  return v;
}

/** The keys flannel writes, folded once (not a new lower-case string per key per record). */
const FOLDED: Record<string, string> = Object.assign(Object.create(null), {
  PublicIP: "publicip",
  PublicIPv6: "publicipv6",
  BackendType: "backendtype",
  BackendData: "backenddata",
  BackendV6Data: "backendv6data",
  VNI: "vni",
  VtepMAC: "vtepmac",
});

/** Builds a Lease from a store record, or throws LeaseRecordError naming the key and the problem. */
export function leaseFromKV(kv: {
  key: string;
  value: Uint8Array;
  revision: number;
  expiresAt: number | null;
  createRevision?: number;
}): Lease {
  const sn = parseSubnetKey(kv.key);
  if (!sn) throw new LeaseRecordError(`not a subnet key: ${logText(kv.key)}`);
  try {
    const lease: Lease = { ...sn, attrs: decodeLeaseAttrs(kv.value), expiresAt: kv.expiresAt, revision: kv.revision };
    if (kv.createRevision !== undefined) lease.createRevision = kv.createRevision;
    return lease;
  } catch (e) {
    throw new LeaseRecordError(`${kv.key}: ${(e as Error).message}`);
  }
}
