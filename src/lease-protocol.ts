// The flannel subnet lease protocol, written once above the Store interface (docs/flannel-compat.md §2).
// Differences from flanneld, on purpose: a lost create race is retried (flanneld exits), renewal is compare-and-set
// on the record's revision (flanneld's blind put let two hosts share a subnet), reservations stay reservations,
// and a corrupt record is skipped but its subnet still counts as taken.

import { bulkWork } from "./jit-policy.ts";
import { logger } from "./log.ts";
import type { NetworkConfig } from "./config.ts";
import { type IPNet, formatCIDR, isAligned, netEqual, netSize, overlaps } from "./ipmath.ts";
import { type Lease, type LeaseAttrs, LeaseRecordError, encodeLeaseAttrs, leaseFromKV, parseSubnetKey, subnetKey } from "./lease.ts";
import { keyShapeProblem } from "./lease-validity.ts";
import { sleep } from "./sleep.ts";
import { type KV, type ReadOptions, type Store, SUBNETS_PREFIX, UNREAD_EXPIRY } from "./store.ts";

const log = logger("lease");

export const RACE_RETRIES = 10;

export class OutOfSubnetsError extends Error {
  constructor(cfg: NetworkConfig) {
    super(
      `out of subnets: every /${cfg.subnetLen} in ${cfg.network ? formatCIDR(cfg.network) : "?"} ` +
        `between SubnetMin and SubnetMax is leased or reserved`,
    );
    this.name = "OutOfSubnetsError";
  }
}

/** The parsed leases under subnets/, plus the subnets of records whose value is corrupt (still taken). */
export interface LeaseSnapshot {
  leases: Lease[];
  /** Subnets whose key parses but whose value does not: never handed out, never treated as a peer. */
  corrupt: IPNet[];
  revision: number;
}

/** Parses one record; logs and returns null for a record that is not a valid lease. */
export function parseLeaseRecord(kv: KV): Lease | null {
  try {
    return leaseFromKV(kv);
  } catch (e) {
    if (e instanceof LeaseRecordError) {
      log.warn(`skipping store record: ${e.message}`);
      return null;
    }
    throw e;
  }
}

/** Records decoded between two yields to the event loop (about 25 ms on a loaded 2-core machine). */
export const PARSE_SLICE = 1000;

/** `opts` { expiry: false }: expiresAt of other hosts' leases is not needed (ReadOptions; saves etcd a request each). */
export async function listLeases(store: Store, opts?: ReadOptions): Promise<LeaseSnapshot> {
  const { items, revision } = await store.list(SUBNETS_PREFIX, opts);
  bulkWork(items.length);
  const leases: Lease[] = [];
  const corrupt: IPNet[] = [];
  for (let i = 0; i < items.length; i++) {
    // Decoding a record costs tens of µs: let timers and I/O (health probes, renewals) in every PARSE_SLICE records.
    if (i > 0 && i % PARSE_SLICE === 0) await new Promise((r) => setImmediate(r));
    const kv = items[i]!;
    const lease = parseLeaseRecord(kv);
    if (lease) leases.push(lease);
    else {
      const sn = parseSubnetKey(kv.key);
      if (sn) corrupt.push(sn.subnet);
    }
  }
  return { leases, corrupt, revision };
}

/** Is this subnet one the config allows us to hold (flannel's "compatible")? */
export function isCompatible(cfg: NetworkConfig, subnet: IPNet): boolean {
  return (
    subnet.family === 4 &&
    subnet.prefix === cfg.subnetLen &&
    subnet.ip >= cfg.subnetMin &&
    subnet.ip <= cfg.subnetMax &&
    isAligned(subnet.ip, cfg.subnetLen, 4)
  );
}

/** A run of free subnets: `count` consecutive /SubnetLen subnets starting at `first`. */
export interface FreeRange {
  first: bigint;
  count: bigint;
}

/** Counts the comparisons of one walk, for the test that holds it to one pass. */
export interface WalkStats {
  comparisons: number;
}

/**
 * Every free subnet in [SubnetMin, SubnetMax] as ranges, in one pass over the taken subnets sorted by address:
 * O(N log N) for N leases (a candidate-by-candidate overlap test was O(N^2) and blocked the event loop for seconds).
 */
export function freeRanges(cfg: NetworkConfig, taken: IPNet[], stats?: WalkStats): FreeRange[] {
  // IPv4 fits a double exactly; numbers sort ~10x faster than bigints.
  const step = Number(netSize({ family: 4, ip: 0n, prefix: cfg.subnetLen }));
  const min = Number(cfg.subnetMin);
  const max = Number(cfg.subnetMax);
  let n = 0;
  const v4: { ip: number; end: number }[] = [];
  for (const t of taken) {
    if (t.family !== 4) continue;
    const ip = Number(t.ip);
    v4.push({ ip, end: ip + 2 ** (32 - t.prefix) - 1 }); // no bigint per lease
  }
  v4.sort((a, b) => (n++, a.ip - b.ip));
  // The candidate subnet (SubnetMin + k*step) that holds `ip`; ip >= min.
  const down = (ip: number) => min + Math.floor((ip - min) / step) * step;
  const out: FreeRange[] = [];
  const push = (first: number, count: number) => out.push({ first: BigInt(first), count: BigInt(count) });
  const maxEnd = max + step - 1; // last address of the last candidate
  let cursor = min; // first candidate not yet known to be taken
  for (const t of v4) {
    n++;
    if (cursor > max || t.ip > maxEnd) break;
    if (t.end < cursor) continue; // inside or before what is already passed
    const blocked = t.ip <= cursor ? cursor : down(t.ip);
    if (blocked > cursor) push(cursor, (blocked - cursor) / step);
    cursor = down(t.end) + step;
  }
  if (cursor <= max) push(cursor, (max - cursor) / step + 1);
  if (stats) stats.comparisons += n;
  return out;
}

/** One subnet chosen uniformly at random among all free ones (not the first few: joiners at once rarely collide). */
export function pickFree(cfg: NetworkConfig, ranges: FreeRange[], random: () => number): IPNet | null {
  let total = 0n;
  for (const r of ranges) total += r.count;
  if (total === 0n) return null;
  let i = BigInt(Math.min(Math.floor(random() * Number(total)), Number(total) - 1));
  const step = netSize({ family: 4, ip: 0n, prefix: cfg.subnetLen });
  for (const r of ranges) {
    if (i < r.count) return { family: 4, ip: r.first + i * step, prefix: cfg.subnetLen };
    i -= r.count;
  }
  return null;
}

export interface AcquireOptions {
  /** The subnet from the previous subnet.env, asked for again if it is free. */
  previousSubnet: IPNet | null;
  ttlMs: number;
  /** For tests: deterministic choice among candidates. */
  random?: () => number;
}

const sameAttrs = (a: LeaseAttrs, b: LeaseAttrs): boolean => Buffer.from(encodeLeaseAttrs(a)).equals(Buffer.from(encodeLeaseAttrs(b)));

/**
 * Takes a lease for `attrs.publicIP`: reuse ours, else the previous subnet, else a random free one.
 * Every write is create-if-absent or compare-and-set, so two hosts can never end up on one subnet.
 */
export async function acquireLease(store: Store, cfg: NetworkConfig, attrs: LeaseAttrs, opts: AcquireOptions): Promise<Lease> {
  return (await acquireLeaseFrom(store, cfg, attrs, opts)).lease;
}

/**
 * acquireLease, plus the list it decided on: the peer watch starts from it (and watches from its revision, so
 * nothing written since is missed) instead of listing every lease a second time.
 */
export async function acquireLeaseFrom(
  store: Store,
  cfg: NetworkConfig,
  attrs: LeaseAttrs,
  opts: AcquireOptions,
): Promise<{ lease: Lease; snapshot: LeaseSnapshot }> {
  const held = (lease: Lease) => ({ lease, snapshot: snap });
  let snap: LeaseSnapshot = { leases: [], corrupt: [], revision: 0 };
  const value = encodeLeaseAttrs(attrs);
  const random = opts.random ?? Math.random;
  for (let attempt = 1; attempt <= RACE_RETRIES; attempt++) {
    // Which subnets are taken, and whether ours is a reservation: no expiry times needed (a lease we reuse gets a new
    // one; the peer watch that starts from this list never reads them either).
    snap = await listLeases(store, { expiry: false });

    // 1. A lease (or reservation) that already carries our public IP. A reservation whose key is not one subnet
    // of this network (a whole-Network key, a wrong prefix) is never taken up.
    const mine = snap.leases.find((l) => l.attrs.publicIP === attrs.publicIP && !badReservation(cfg, l));
    if (mine) {
      if (mine.expiresAt === null) {
        // A reservation is held as it is: refresh its attrs (e.g. VtepMAC) but never give it an expiry.
        if (!isCompatible(cfg, mine.subnet))
          log.warn(
            `reservation ${formatCIDR(mine.subnet)} for ${attrs.publicIP} does not fit the network config; using it anyway as reserved`,
          );
        if (sameAttrs(mine.attrs, attrs)) return held(mine);
        const rev = await store.update(subnetKey(mine.subnet, mine.ipv6Subnet), value, mine.revision, {});
        if (rev !== null) return held({ ...mine, attrs, revision: rev });
        continue;
      }
      if (isCompatible(cfg, mine.subnet)) {
        const rev = await store.update(subnetKey(mine.subnet, mine.ipv6Subnet), value, mine.revision, { ttlMs: opts.ttlMs });
        if (rev !== null) {
          log.info(`reusing lease ${formatCIDR(mine.subnet)} held by ${attrs.publicIP}`);
          return held({ ...mine, attrs, revision: rev, expiresAt: Date.now() + opts.ttlMs });
        }
        continue; // changed under us: look again
      }
      log.warn(`our old lease ${formatCIDR(mine.subnet)} does not fit the network config; releasing it`);
      await store.delete(subnetKey(mine.subnet, mine.ipv6Subnet), mine.revision);
      continue;
    }

    // Only keys shaped like one subnet of this network take one: a whole-Network key never blocks a join.
    const taken = [...snap.leases.map((l) => l.subnet), ...snap.corrupt].filter((n) => !keyShapeProblem(cfg, n, null));
    let subnet: IPNet | null = null;
    // 2. The subnet we had before (from subnet.env), if nobody holds it now.
    const prev = opts.previousSubnet;
    if (prev) {
      if (!isCompatible(cfg, prev)) log.warn(`previous subnet ${formatCIDR(prev)} does not fit the network config; ignoring it`);
      else if (!taken.some((t) => overlaps(t, prev))) subnet = prev;
    }
    // 3. A random pick among all free subnets (flannel picks among the first 100, which makes a join storm collide).
    if (!subnet) {
      subnet = pickFree(cfg, freeRanges(cfg, taken), random);
      if (!subnet) throw new OutOfSubnetsError(cfg);
    }

    const rev = await store.create(subnetKey(subnet), value, { ttlMs: opts.ttlMs });
    if (rev !== null) {
      log.info(`acquired lease ${formatCIDR(subnet)} for ${attrs.publicIP} (attempt ${attempt})`);
      return held({ subnet, ipv6Subnet: null, attrs, revision: rev, expiresAt: Date.now() + opts.ttlMs });
    }
    log.debug(`lost the race for ${formatCIDR(subnet)}; trying again`);
    // Another host took it between our list and our create: the next list will show it.
  }
  throw new Error(`max retries reached trying to acquire a subnet (${RACE_RETRIES} tries)`);
}

function badReservation(cfg: NetworkConfig, l: Lease): boolean {
  if (l.expiresAt !== null) return false;
  const why = keyShapeProblem(cfg, l.subnet, l.ipv6Subnet);
  if (why) log.warn(`not using reservation ${subnetKey(l.subnet, l.ipv6Subnet)} for ${l.attrs.publicIP}: ${why}`);
  return why !== null;
}

export type RenewResult = { ok: true; lease: Lease } | { ok: false; reason: "lost" | "changed" };

/** Renews by compare-and-set on the revision we hold; never a blind overwrite. */
export async function renewLease(store: Store, lease: Lease, ttlMs: number): Promise<RenewResult> {
  const key = subnetKey(lease.subnet, lease.ipv6Subnet);
  if (lease.expiresAt === null) {
    // A reservation is never renewed, only checked: is it still there, and still ours?
    const cur = await store.get(key);
    const held = cur ? parseLeaseRecord(cur) : null;
    if (!held) return { ok: false, reason: "lost" };
    return held.attrs.publicIP === lease.attrs.publicIP ? { ok: true, lease: held } : { ok: false, reason: "changed" };
  }
  const value = encodeLeaseAttrs(lease.attrs);
  const rev = await store.update(key, value, lease.revision, { ttlMs });
  if (rev !== null) return { ok: true, lease: { ...lease, revision: rev, expiresAt: Date.now() + ttlMs } };
  // Our revision is stale. If the record is still ours (same public IP) adopt its revision and try once more;
  // a corrupt record under our key has no valid owner, so it is repaired with ours the same way.
  const cur = await store.get(key);
  if (!cur) return { ok: false, reason: "lost" };
  const parsed = parseLeaseRecord(cur);
  if (parsed && parsed.attrs.publicIP !== lease.attrs.publicIP) return { ok: false, reason: "changed" };
  if (parsed && parsed.expiresAt === null) return { ok: true, lease: parsed }; // an operator turned it into a reservation
  const rev2 = await store.update(key, value, cur.revision, { ttlMs });
  if (rev2 === null) return { ok: false, reason: "changed" };
  return { ok: true, lease: { ...lease, revision: rev2, expiresAt: Date.now() + ttlMs } };
}

/**
 * Re-creates a lease that vanished (expired or deleted by hand), on the same subnet if it is still free.
 * A record that is already there with our public IP is ours (re-created a moment ago by our own renewal, with the
 * watch's delete event arriving late): it is adopted, never mistaken for another host's. Null: another host has it.
 */
export async function reclaimLease(store: Store, lease: Lease, ttlMs: number): Promise<Lease | null> {
  const key = subnetKey(lease.subnet, lease.ipv6Subnet);
  const rev = await store.create(key, encodeLeaseAttrs(lease.attrs), { ttlMs });
  if (rev !== null) return { ...lease, revision: rev, expiresAt: Date.now() + ttlMs };
  const cur = await store.get(key);
  const held = cur ? parseLeaseRecord(cur) : null;
  return held && held.attrs.publicIP === lease.attrs.publicIP ? { ...lease, revision: held.revision, expiresAt: held.expiresAt } : null;
}

/** When to renew: `margin` before expiry, clamped so that short test TTLs still renew at half-life. */
export function renewDelayMs(lease: Lease, marginMs: number, ttlMs: number, now = Date.now()): number {
  if (lease.expiresAt === null) return Number.POSITIVE_INFINITY;
  const margin = Math.min(marginMs, ttlMs / 2);
  return Math.max(0, lease.expiresAt - margin - now);
}

export const leaseEquals = (a: Lease, b: Lease): boolean => netEqual(a.subnet, b.subnet) && sameAttrs(a.attrs, b.attrs);

export interface KeeperOptions {
  ttlMs: number;
  /** Renew this long before expiry (clamped to half the TTL). */
  marginMs: number;
  /** A store call failed (it is retried). */
  onError?: (e: Error) => void;
}

/**
 * Keeps our lease: renews it by compare-and-set `margin` before expiry and re-creates it on the same subnet when it
 * vanished. The only place that writes our own record after acquisition: watch events about it just wake it.
 */
export class LeaseKeeper {
  renewals = 0;
  /**
   * Set while another writer's record sits on our key (its PublicIP, or a note that it is unreadable). We then keep
   * our subnet and kernel state (never programming that record), stop renewing, and re-claim the key by
   * create-if-absent as soon as it goes. Exiting instead (flanneld) lets a supervisor restart us on a new subnet,
   * which renumbers every container on this host and still leaves the intruder's record in place.
   */
  conflict: string | null = null;
  private wake = new AbortController();

  constructor(
    private readonly store: Store,
    public lease: Lease,
    private readonly opts: KeeperOptions,
  ) {}

  /** Our own record as a watch saw it (null: gone). Our own newer revision is adopted; anything else is checked now. */
  notice(own: Lease | null): void {
    if (own && own.attrs.publicIP === this.lease.attrs.publicIP) {
      // An expiry the watch did not read (UNREAD_EXPIRY) keeps ours: renewing early is harmless, never renewing is not.
      const expiresAt = own.expiresAt === UNREAD_EXPIRY ? this.lease.expiresAt : own.expiresAt;
      if (own.revision > this.lease.revision) this.lease = { ...this.lease, revision: own.revision, expiresAt };
      return;
    }
    this.wake.abort();
  }

  /** Runs until `signal` aborts. */
  async run(signal: AbortSignal): Promise<"stopped"> {
    const { ttlMs, marginMs } = this.opts;
    while (!signal.aborted) {
      const woken = this.wake.signal;
      const delay = this.conflict !== null ? Math.min(CONFLICT_POLL_MS, ttlMs / 10) : renewDelayMs(this.lease, marginMs, ttlMs);
      await sleep(delay, AbortSignal.any([signal, woken]));
      if (signal.aborted) break;
      if (woken.aborted) this.wake = new AbortController();
      try {
        if (this.conflict !== null) {
          await this.reclaimAfterConflict();
          continue;
        }
        const r = await renewLease(this.store, this.lease, ttlMs);
        if (r.ok) {
          if (r.lease.expiresAt !== null) this.renewals++;
          this.lease = r.lease;
          continue;
        }
        const again = await reclaimLease(this.store, this.lease, ttlMs);
        if (!again) {
          await this.enterConflict();
          continue;
        }
        log.warn(`lease ${formatCIDR(this.lease.subnet)} was ${r.reason === "lost" ? "gone" : "changed"}; re-created it`);
        this.lease = again;
      } catch (e) {
        this.opts.onError?.(e as Error);
        log.warn(`keeping lease ${formatCIDR(this.lease.subnet)} failed: ${(e as Error).message}; retrying`);
        await sleep(Math.min(60_000, ttlMs / 10), signal);
      }
    }
    return "stopped";
  }

  private key(): string {
    return subnetKey(this.lease.subnet, this.lease.ipv6Subnet);
  }

  /** Who wrote the record now on our key: its PublicIP, or why it has none. */
  private async writer(): Promise<string | null> {
    const cur = await this.store.get(this.key());
    if (!cur) return null;
    const held = parseLeaseRecord(cur);
    return held ? `PublicIP ${held.attrs.publicIP}` : "an unreadable record";
  }

  private async enterConflict(): Promise<void> {
    this.conflict = (await this.writer()) ?? "a record that is already gone";
    log.error(
      `lease conflict: ${this.key()} was overwritten by another writer (${this.conflict}); keeping subnet ` +
        `${formatCIDR(this.lease.subnet)} and its kernel state, not programming that record, and re-claiming the key ` +
        "by compare-and-set as soon as it goes",
    );
    this.wake.abort(); // try at once: the record may already be gone
  }

  private async reclaimAfterConflict(): Promise<void> {
    const again = await reclaimLease(this.store, this.lease, this.opts.ttlMs);
    if (again) {
      log.warn(`lease conflict over: re-claimed ${this.key()} for ${this.lease.attrs.publicIP}`);
      this.conflict = null;
      this.lease = again;
      return;
    }
    const now = await this.writer();
    if (now !== null && now !== this.conflict) {
      this.conflict = now;
      log.error(`lease conflict: ${this.key()} is now held by another writer (${now}); still waiting for it to go`);
    }
  }
}

/** How often a conflicting record on our key is looked at again (its deletion also wakes the keeper at once). */
const CONFLICT_POLL_MS = 10_000;
