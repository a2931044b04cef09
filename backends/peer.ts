// Checks shared by the backends for what a peer lease may put into the kernel. A lease is untrusted input: another
// host, an operator or an attacker wrote it, so every value is re-checked here even if the decoder checked it too.
import type { NetworkConfig } from "../src/config.ts";
import { containsNet, formatCIDR, formatIP, ipv4Number, parseIP } from "../src/ipmath.ts";
import type { Lease } from "../src/lease.ts";
import type { PeerState } from "./backend.ts";
import { logText } from "../src/log-text.ts";

/** "10.5.7.0/24" for log and ignore reasons; tolerant of a malformed subnet so a reason can always be built. */
export function subnetLabel(lease: Lease): string {
  try {
    return formatCIDR(lease.subnet);
  } catch {
    return "<bad subnet>";
  }
}

/** A peer lease not programmed, and why (a function, not a closure made per peer: 82 bytes each at 10k peers). */
export const ignored = (peer: Lease, why: string): PeerState => ({ ignored: `${subnetLabel(peer)}: ${why}` });

/**
 * The peer's IPv4 underlay address in canonical form, or an error string. Rejects anything that could send
 * traffic somewhere odd: unspecified, loopback, link-local-multicast/multicast, broadcast and the reserved 240/4.
 */
export function checkUnderlayIPv4(v: unknown, what = "PublicIP"): { ip: string } | { error: string } {
  if (typeof v !== "string") return { error: `${what} is not a string: ${logText(v)}` };
  // A canonical, usable address (nearly every lease) is checked as a number, without bigint work; the rest below.
  const n = ipv4Number(v);
  if (n > 0 && n >>> 24 !== 127 && n >>> 28 < 0xe) return { ip: v };
  const ip = parseIP(v);
  if (ip?.family !== 4) return { error: `${what} is not an IPv4 address: ${logText(v)}` };
  const x = ip.value;
  if (x === 0n) return { error: `${what} is unspecified (0.0.0.0)` };
  if (x >> 24n === 127n) return { error: `${what} is a loopback address: ${v}` };
  if (x >> 28n === 0xen) return { error: `${what} is a multicast address: ${v}` };
  if (x >> 28n === 0xfn) return { error: `${what} is a reserved or broadcast address: ${v}` };
  return { ip: formatIP(x, 4) };
}

/**
 * The peer subnet must be an IPv4 network inside the configured Network: a hostile key such as
 * "subnets/0.0.0.0-0" would otherwise become a route that hijacks the host's default route.
 */
export function checkPeerSubnet(lease: Lease, config: NetworkConfig): string | null {
  const s = lease.subnet;
  if (s?.family !== 4 || typeof s.ip !== "bigint" || !Number.isInteger(s.prefix)) return "subnet is not an IPv4 network";
  const net = config.network;
  if (net?.family === 4 && s.prefix >= net.prefix && s.prefix <= 32) {
    // Numbers (IPv4 fits a double exactly): no bigint work per peer.
    const first = Number(net.ip);
    const ip = Number(s.ip);
    if (ip >= first && ip + 2 ** (32 - s.prefix) <= first + 2 ** (32 - net.prefix)) return null;
  }
  if (config.network && !containsNet(config.network, s)) return `subnet is outside the configured Network ${formatCIDR(config.network)}`;
  return null;
}

/** Compares two IPv4 strings by value ("10.0.0.1" vs an equivalent spelling). */
export function sameIPv4(a: string | null | undefined, b: string | null | undefined): boolean {
  if (!a || !b) return false;
  const na = ipv4Number(a);
  if (na >= 0 && na === ipv4Number(b)) return true;
  const x = parseIP(a);
  const y = parseIP(b);
  return !!x && !!y && x.family === 4 && y.family === 4 && x.value === y.value;
}
