// Address ranges that can never be a cluster network or a host's underlay address: unspecified, loopback,
// link-local, multicast and reserved/broadcast (IPv6: unspecified, loopback, link-local, multicast). Shared by the
// config check (Network, IPv6Network) and the lease check (PublicIP, PublicIPv6).
import { type IPNet, overlaps, parseCIDR } from "./ipmath.ts";

const RANGES: [IPNet, string][] = [
  ["0.0.0.0/8", 'the unspecified/"this network" range 0.0.0.0/8'],
  ["127.0.0.0/8", "the loopback range 127.0.0.0/8"],
  ["169.254.0.0/16", "the link-local range 169.254.0.0/16"],
  ["224.0.0.0/4", "the multicast range 224.0.0.0/4"],
  ["240.0.0.0/4", "the reserved range 240.0.0.0/4 (with the broadcast address 255.255.255.255)"],
  ["::/128", "the unspecified address ::"],
  ["::1/128", "the loopback address ::1"],
  ["fe80::/10", "the link-local range fe80::/10"],
  ["ff00::/8", "the multicast range ff00::/8"],
].map(([c, why]) => [parseCIDR(c!), why!]);

/** The IPv4 ranges as [first, last] numbers: an address check without bigint work (every peer lease has one). */
const V4: [number, number, string][] = RANGES.filter(([r]) => r.family === 4).map(([r, why]) => [
  Number(r.ip),
  Number(r.ip) + 2 ** (32 - r.prefix) - 1,
  why,
]);

/** Which reserved IPv4 range the address `ip` (a number) is in, in words; null if none. */
export function reservedIPv4(ip: number): string | null {
  for (const [first, last, why] of V4) if (ip >= first && ip <= last) return why;
  return null;
}

/** Which reserved range `net` (an address is a /32 or /128) overlaps, in words; null if none. */
export function reservedRange(net: IPNet): string | null {
  for (const [r, why] of RANGES) if (overlaps(r, net)) return why;
  return null;
}
