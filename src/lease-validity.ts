// Which lease records may be used: a record is used only if it can describe nothing but itself (issue 12).
// Checked once, above the stores, for the peer watch and the lease protocol alike:
// - its key has the shape of one subnet of this network (prefix == SubnetLen, inside Network, no host bits; the
//   IPv6 twin likewise): a whole-Network or oversized key is ignored and never counts as taking subnets;
// - its PublicIP (PublicIPv6) is a unicast address outside the reserved ranges, its VtepMAC a non-zero unicast MAC;
// - it takes no subnet and no VtepMAC that a lease created earlier holds: the older creation revision wins, so a
//   newly written record can never move another host's traffic, and the older one stays programmed.
// The reason a record is not used is logged once per record (again only if the reason changes).

import { checkUnicastMac } from "../backends/vxlan.ts";
import type { NetworkConfig } from "./config.ts";
import { type IPNet, containsNet, formatCIDR, ipv4Number, isAligned, parseIP } from "./ipmath.ts";
import { type Lease, fieldFolded, subnetKey } from "./lease.ts";
import { logger } from "./log.ts";
import { logText } from "./log-text.ts";
import type { PeerEvent } from "./peer-watch.ts";
import { reservedIPv4, reservedRange } from "./reserved-addresses.ts";

const log = logger("lease");

/** Why a subnet key cannot be one lease of this network; null if it can. Such a record never takes a subnet. */
export function keyShapeProblem(cfg: NetworkConfig, subnet: IPNet, ipv6Subnet: IPNet | null): string | null {
  if (cfg.enableIPv4 && cfg.network) {
    const p = netShapeProblem(subnet, cfg.network, cfg.subnetLen, "SubnetLen");
    if (p) return p;
  }
  if (ipv6Subnet && cfg.enableIPv6 && cfg.ipv6Network) {
    const p = netShapeProblem(ipv6Subnet, cfg.ipv6Network, cfg.ipv6SubnetLen, "IPv6SubnetLen");
    if (p) return `IPv6 part: ${p}`;
  }
  return null;
}

function netShapeProblem(n: IPNet, network: IPNet, len: number, lenName: string): string | null {
  if (n.prefix !== len) return `prefix /${n.prefix} is not the network's ${lenName} /${len}`;
  if (n.family === 4 && network.family === 4 && v4Inside(n, network)) return null; // the common case, without bigint work
  if (!isAligned(n.ip, n.prefix, n.family)) return "subnet has host bits set";
  if (!containsNet(network, n)) return `subnet ${formatCIDR(n)} is outside the Network ${formatCIDR(network)}`;
  return null;
}

/** Why a lease's value cannot be used (underlay address, VTEP MAC); null if it can. */
export function valueProblem(lease: Lease): string | null {
  const v4 = addressProblem(lease.attrs.publicIP, 4);
  if (v4) return `PublicIP ${v4}`;
  if (lease.attrs.publicIPv6 !== null) {
    const v6 = addressProblem(lease.attrs.publicIPv6, 6);
    if (v6) return `PublicIPv6 ${v6}`;
  }
  const m = readMac(lease.attrs.backendData);
  if (m && "error" in m) return `BackendData ${m.error}`;
  const m6 = readMac(lease.attrs.backendV6Data);
  if (m6 && "error" in m6) return `BackendV6Data ${m6.error}`;
  return null;
}

/** An aligned IPv4 subnet inside the network (numbers: IPv4 fits a double exactly). */
function v4Inside(n: IPNet, network: IPNet): boolean {
  const ip = Number(n.ip);
  const size = 2 ** (32 - n.prefix);
  const first = Number(network.ip);
  return ip % size === 0 && n.prefix >= network.prefix && ip >= first && ip + size <= first + 2 ** (32 - network.prefix);
}

function addressProblem(s: string, family: 4 | 6): string | null {
  const n = family === 4 ? ipv4Number(s) : -1;
  if (n >= 0) {
    const r = reservedIPv4(n);
    return r ? `${s} is in ${r}, not a host's unicast address` : null;
  }
  const ip = parseIP(s);
  if (ip?.family !== family) return `is not an IPv${family} address: ${logText(s)}`;
  const r = reservedRange({ family, ip: ip.value, prefix: family === 4 ? 32 : 128 });
  return r ? `${s} is in ${r}, not a host's unicast address` : null;
}

/** The VtepMAC in BackendData (normalised), an error, or null if there is none. */
function readMac(data: unknown): { mac: string } | { error: string } | null {
  if (!data || typeof data !== "object" || Array.isArray(data)) return null;
  const v = fieldFolded(data as Record<string, unknown>, "vtepmac");
  if (v === undefined || v === null) return null;
  return checkUnicastMac(v);
}

/** A VTEP MAC of a lease (IPv4 or IPv6 data), normalised; only for leases whose value passed valueProblem. */
function macOf(data: unknown): string | null {
  const m = readMac(data);
  return m && "mac" in m ? m.mac : null;
}

/** Why a lease cannot be used on its own (shape or value); null if it can, conflicts aside. */
export function leaseProblem(cfg: NetworkConfig, lease: Lease): string | null {
  return keyShapeProblem(cfg, lease.subnet, lease.ipv6Subnet) ?? valueProblem(lease);
}

/** A subnet or MAC a lease claims (UsablePeers.resources). */
type Resource = number | string;

/**
 * Resource -> claimant(s), as two maps: IPv4 subnets (numbers) and the rest. One map of 20,000 entries took 3.4 MB
 * at 10k peers, two of 10,000 take 1.3 MB (the engine's table grows in steps).
 */
class Claims {
  private readonly v4 = new Map<number, string | Set<string>>();
  private readonly other = new Map<string, string | Set<string>>();
  get(r: Resource): string | Set<string> | undefined {
    return typeof r === "number" ? this.v4.get(r) : this.other.get(r);
  }
  set(r: Resource, c: string | Set<string>): void {
    if (typeof r === "number") this.v4.set(r, c);
    else this.other.set(r, c);
  }
  delete(r: Resource): void {
    if (typeof r === "number") this.v4.delete(r);
    else this.other.delete(r);
  }
}

const createdAt = (l: Lease): number => l.createRevision ?? l.revision;

/**
 * The set of usable peer leases, kept up to date as records come and go. Conflicts (one subnet or one VTEP MAC
 * claimed by several records) are settled by creation revision, oldest first, within the group of records that
 * share something, so a change costs the size of its group, not of the cluster. Our own lease always wins here:
 * a record claiming our subnet or our MAC is never programmed on this host.
 */
export class UsablePeers {
  /** Every record seen, usable or not, by key. */
  private readonly byKey = new Map<string, Lease>();
  /** The same, read-only: the peer watch diffs its lists against it (PeerWatchOptions.known). */
  readonly records: ReadonlyMap<string, Lease> = this.byKey;
  /**
   * Keys of records that are not usable now (every other record is): the rare case kept, not the common one (a set
   * of 10,000 usable keys was 0.5 MB at 10k peers).
   */
  private readonly unusable = new Set<string>();
  /** The reason last logged per unusable key (logged once per record and reason). */
  private readonly logged = new Map<string, string>();
  /**
   * Resource (resources(): an IPv4 subnet address as a number, "6:<ip>", a MAC) -> the key claiming it, or the keys
   * when several do. Nearly every
   * resource has one claimant: held as a plain string, a Set only for a conflict (10k peers: 20k Sets saved).
   */
  private readonly claims = new Claims();

  private ownHeld: { lease: Lease | null; held: Map<Resource, string> } | null = null;

  /**
   * Called before the usable lease under a key changes (its record, or whether it is usable), with the usable lease
   * until then (null: none). Every key it is called for is among the keys set() or delete() then returns.
   */
  onChange: ((key: string, had: Lease | null) => void) | null = null;

  constructor(
    private readonly cfg: NetworkConfig,
    /** Our own lease (null before we hold one). */
    private readonly own: () => Lease | null,
  ) {}

  /** Records a new or changed record; returns the keys whose usability or lease changed (to diff against). */
  set(key: string, lease: Lease): Iterable<string> {
    const old = this.records.get(key);
    if (!old) {
      // A new record nobody else claims anything of (every record of an initial sync but a conflict): decided alone,
      // without the conflict-group walk.
      const rs = this.resources(lease);
      let alone = true;
      for (const r of rs) {
        const c = this.claims.get(r);
        if (c !== undefined && c !== key) alone = false;
      }
      if (alone) {
        this.touch(key);
        this.byKey.set(key, lease);
        for (const r of rs) this.claims.set(r, key);
        this.decide(key, lease, rs, this.ownHolder());
        return [key]; // not a Set: one per record of a 10k-peer sync
      }
    }
    const group = new Set<string>([key]);
    if (old) this.unclaim(key, old, group);
    this.touch(key);
    this.byKey.set(key, lease);
    for (const r of this.resources(lease)) {
      const c = this.claims.get(r);
      if (c === undefined || c === key) this.claims.set(r, key);
      else if (typeof c === "string") {
        group.add(c);
        this.claims.set(r, new Set([c, key]));
      } else {
        for (const k of c) group.add(k);
        c.add(key);
      }
    }
    return this.settle(group);
  }

  /** Forgets a record; returns the keys whose usability changed. */
  delete(key: string): Iterable<string> {
    const old = this.records.get(key);
    if (!old) return [];
    const group = new Set<string>([key]);
    this.unclaim(key, old, group);
    this.touch(key);
    this.byKey.delete(key);
    this.unusable.delete(key);
    this.logged.delete(key);
    return this.settle(group);
  }

  isUsable(key: string): boolean {
    return this.records.has(key) && !this.unusable.has(key);
  }

  get(key: string): Lease | undefined {
    return this.records.get(key);
  }

  get ignoredCount(): number {
    return this.unusable.size;
  }

  get usableCount(): number {
    return this.records.size - this.unusable.size;
  }

  private touch(k: string): void {
    if (this.onChange) this.onChange(k, this.isUsable(k) ? this.records.get(k)! : null);
  }

  /** What a lease claims: its IPv4 subnet (the address as a number: no string per lease), IPv6 subnet, VTEP MACs. */
  private resources(l: Lease): Resource[] {
    const r: Resource[] = [l.subnet.family === 4 ? Number(l.subnet.ip) : `4:${l.subnet.ip}`];
    if (l.ipv6Subnet) r.push(`6:${l.ipv6Subnet.ip}`);
    // MACs ("aa:bb:.."): never a "4:"/"6:" string.
    const m = macOf(l.attrs.backendData);
    if (m) r.push(m);
    const m6 = macOf(l.attrs.backendV6Data);
    if (m6 && m6 !== m) r.push(m6);
    return r;
  }

  private unclaim(key: string, old: Lease, group: Set<string>): void {
    for (const r of this.resources(old)) {
      const c = this.claims.get(r);
      if (c === undefined) continue;
      if (typeof c === "string") {
        if (c === key) this.claims.delete(r);
        else group.add(c);
        continue;
      }
      c.delete(key);
      for (const k of c) group.add(k);
      if (c.size === 1) this.claims.set(r, c.values().next().value as string);
      else if (c.size === 0) this.claims.delete(r);
    }
  }

  /** Re-decides every record connected to `seed` through shared resources, oldest first. */
  private settle(seed: Set<string>): Set<string> {
    // Widen to the whole conflict group: records sharing a resource with any member.
    const group = new Set<string>();
    const todo = [...seed];
    while (todo.length) {
      const k = todo.pop()!;
      if (group.has(k)) continue;
      group.add(k);
      const l = this.records.get(k);
      if (!l) continue;
      for (const r of this.resources(l)) {
        const c = this.claims.get(r);
        if (typeof c === "string") {
          if (!group.has(c)) todo.push(c);
        } else if (c) for (const o of c) if (!group.has(o)) todo.push(o);
      }
    }
    const members = [...group].filter((k) => this.records.has(k));
    members.sort((a, b) => createdAt(this.records.get(a)!) - createdAt(this.records.get(b)!) || (a < b ? -1 : a > b ? 1 : 0));
    const holder = new Map(this.ownHolder()); // resource -> key that holds it
    const changed = new Set<string>(seed);
    for (const k of members) {
      const l = this.records.get(k)!;
      const was = !this.unusable.has(k);
      const rs = this.resources(l);
      const now = this.decide(k, l, rs, holder);
      if (now) for (const r of rs) holder.set(r, k);
      if (was !== now) changed.add(k);
    }
    return changed;
  }

  /** Whether record `k` is usable now, given who holds which resource; updates `unusable` and logs a new reason once. */
  private decide(k: string, l: Lease, rs: Resource[], holder: Map<Resource, string>): boolean {
    let why = leaseProblem(this.cfg, l);
    if (!why) {
      for (const r of rs) {
        const h = holder.get(r);
        if (h === undefined) continue;
        const mac = typeof r === "string" && !r.startsWith("4:") && !r.startsWith("6:");
        why = mac
          ? `VtepMAC ${r} is in use by ${h}${h.startsWith("subnets/") ? ", created earlier" : ""}`
          : `${typeof r === "string" && r.startsWith("6:") ? "IPv6 subnet" : "subnet"} overlaps ${h}${h.startsWith("subnets/") ? ", created earlier" : ""}`;
        break;
      }
    }
    if (why) {
      if (!this.unusable.has(k)) this.touch(k);
      this.unusable.add(k);
      if (this.logged.get(k) !== why) log.warn(`ignoring lease ${k}: ${why}`);
      this.logged.set(k, why);
      return false;
    }
    if (this.unusable.has(k)) this.touch(k);
    this.unusable.delete(k);
    this.logged.delete(k);
    return true;
  }

  /** What our own lease holds (resource -> "our own lease"), made again only when the lease changes. */
  private ownHolder(): Map<Resource, string> {
    const own = this.own();
    if (this.ownHeld?.lease !== own) {
      const m = new Map<Resource, string>();
      if (own) for (const r of this.resources(own)) m.set(r, "our own lease");
      this.ownHeld = { lease: own, held: m };
    }
    return this.ownHeld.held;
  }
}

/** The key a lease is stored under. */
export const keyOfLease = (l: Lease): string => subnetKey(l.subnet, l.ipv6Subnet);

/**
 * Passes a raw peer event stream through UsablePeers: Added/Removed only for usable records, Removed when a
 * record stops being usable, Added when one becomes usable (its older rival left). The initial snapshot is decided
 * as a whole, so the order records are listed in never makes a newer record flash into the kernel. `sel` starts
 * empty and is written only here; the raw stream may read its records (PeerWatchOptions.known).
 */
export async function* usablePeerEvents(events: AsyncIterable<PeerEvent>, sel: UsablePeers): AsyncGenerator<PeerEvent> {
  let initial = true;
  const pending = new Set<string>();
  // What was passed on is the usable lease of each key, except for the keys changed since (before the next diff): for
  // those, what was passed on before. No map of every key passed on (10k peers: 0.65 MB).
  const before = new Map<string, Lease | null>();
  sel.onChange = (key, had) => {
    if (!initial && !before.has(key)) before.set(key, had);
  };
  function* diff(keys: Iterable<string>): Generator<PeerEvent> {
    for (const key of keys) {
      const want = sel.isUsable(key) ? sel.get(key)! : null;
      const had = initial ? null : before.has(key) ? before.get(key)! : want;
      before.delete(key);
      if (want && had !== want) yield { type: "added", key, lease: want };
      else if (!want && had) yield { type: "removed", key, lease: had };
    }
  }
  for await (const ev of events) {
    if (ev.type === "added" || ev.type === "removed") {
      const changed = ev.type === "added" ? sel.set(ev.key, ev.lease) : sel.delete(ev.key);
      if (initial) for (const k of changed) pending.add(k);
      else yield* diff(changed);
    } else if (ev.type === "synced") {
      if (initial) yield* diff(pending);
      initial = false;
      pending.clear(); // emptied, not replaced: the finished diff() generator's frame may still hold it
      yield { type: "synced", peers: sel.usableCount };
    } else yield ev;
  }
}
