// Lines of `ip -o monitor label link address route neigh [nexthop]` and `bridge monitor fdb` parsed into the few facts the
// reconciler repairs from. The text comes from the kernel through iproute2 but is parsed defensively anyway: a line
// that does not look exactly like one we know (or holds a value that does not validate) is ignored, never guessed at.
import { validDevName, validIP, validMAC, validNet, validNexthopId } from "./validate.ts";

export type KernelEvent =
  /** A main-table route went away (dst as a canonical CIDR). */
  | { kind: "route"; deleted: true; dst: string; dev?: string }
  | { kind: "neigh"; deleted: true; dev: string; ip: string }
  | { kind: "fdb"; deleted: true; dev: string; mac: string; dst?: string }
  | { kind: "addr"; deleted: true; dev: string }
  /** A nexthop object went away (the kernel drops the routes through it without a route event). */
  | { kind: "nexthop"; deleted: true; id: number }
  /** A link appeared or changed (up = administratively up), or was deleted. */
  | { kind: "link"; deleted: boolean; dev: string; up: boolean };

const valid = <T>(f: () => T): T | null => {
  try {
    return f();
  } catch {
    return null;
  }
};

// "5: d0@d1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 ..."
const LINK = /^\d+: ([^\s:@]+)(?:@[^\s:]+)?: <([A-Z0-9_,-]*)>/;
// "6: vx0    inet 10.7.0.0/32 scope global vx0\ ..."
const ADDR = /^\d+: ([^\s:@]+)\s+inet6? \S+/;
const ROUTE_TYPES = new Set(["local", "broadcast", "multicast", "unreachable", "prohibit", "blackhole", "throw", "anycast", "nat"]);

/** One line of `ip -o monitor label ...`; null for anything the reconciler does not act on. */
export function parseIpMonitorLine(line: string): KernelEvent | null {
  const m = /^\[(LINK|ADDR|ROUTE|NEIGH|NEXTHOP)\](Deleted )?(.*)$/.exec(line.trimEnd());
  if (!m) return null;
  const [, label, del, rest] = m as unknown as [string, string, string | undefined, string];
  const deleted = del !== undefined;
  if (label === "LINK") {
    const l = LINK.exec(rest);
    if (!l) return null;
    const dev = valid(() => validDevName(l[1]));
    if (!dev) return null;
    const flags = l[2]!.split(",");
    // Administrative state: setting a link down is what makes the kernel drop its IPv4 routes (losing carrier does not).
    return { kind: "link", deleted, dev, up: flags.includes("UP") };
  }
  if (!deleted) return null; // additions and changes are ours (echoes) or caught by the safety-net reconcile
  const w = rest.trim().split(/\s+/);
  if (label === "ADDR") {
    const a = ADDR.exec(rest);
    const dev = a ? valid(() => validDevName(a[1])) : null;
    return dev ? { kind: "addr", deleted, dev } : null;
  }
  if (label === "NEXTHOP") {
    // "id 7 via 192.0.2.9 dev eth0 scope link proto 159"
    const id = w[0] === "id" && /^\d{1,10}$/.test(w[1] ?? "") ? valid(() => validNexthopId(Number(w[1]))) : null;
    return id === null ? null : { kind: "nexthop", deleted, id };
  }
  const dev = word(w, "dev");
  if (label === "NEIGH") {
    const ip = valid(() => validIP(w[0]));
    const d = dev === undefined ? null : valid(() => validDevName(dev));
    return ip && d ? { kind: "neigh", deleted, dev: d, ip } : null;
  }
  // ROUTE: other tables and route types are never ours.
  if (ROUTE_TYPES.has(w[0]!)) return null;
  const table = word(w, "table");
  if (table !== undefined && table !== "main") return null;
  const dst = routeDst(w[0]!);
  if (!dst) return null;
  const d = dev === undefined ? undefined : valid(() => validDevName(dev));
  if (d === null) return null;
  return d === undefined ? { kind: "route", deleted, dst } : { kind: "route", deleted, dst, dev: d };
}

/** One line of `bridge monitor fdb`; only deletions of entries with a remote matter. */
export function parseFdbMonitorLine(line: string): KernelEvent | null {
  const w = line.trim().split(/\s+/);
  if (w[0] !== "Deleted") return null;
  const mac = valid(() => validMAC(w[1]));
  const dev = word(w, "dev");
  const d = dev === undefined ? null : valid(() => validDevName(dev));
  if (!mac || !d) return null;
  const dstWord = word(w, "dst");
  if (dstWord === undefined) return { kind: "fdb", deleted: true, dev: d, mac };
  const dst = valid(() => validIP(dstWord));
  return dst ? { kind: "fdb", deleted: true, dev: d, mac, dst } : null;
}

/** The word after `key`, if any. */
function word(w: string[], key: string): string | undefined {
  const i = w.indexOf(key);
  return i >= 0 ? w[i + 1] : undefined;
}

function routeDst(s: string): string | null {
  let dst = s;
  if (dst === "default") return null; // never ours (the agent only routes peer subnets)
  const v6 = dst.includes(":");
  if (!dst.includes("/")) dst += v6 ? "/128" : "/32";
  return valid(() => validNet(dst, "route dst"));
}
