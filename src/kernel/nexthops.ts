// Nexthop objects behind our peer routes (Linux >= 5.3), the reconciler's pure bookkeeping: which (gateway, device,
// onlink) the desired routes need, which id each has, and which of them the kernel has.
//
// Why: the kernel's fib_info hash covers the device but not the gateway, so 10,000 routes each with its own gateway
// on one device share one hash chain and programming them is quadratic (2.6 s of kernel time at 10k, 0.65 s at 5k);
// routes through nexthop objects are linear (0.2 s + 0.2 s). docs/flannel-compat.md has the measurements.
//
// Ids: ours start at NEXTHOP_ID_BASE; ids in use by others (any other protocol) are never handed out. Our own
// nexthops found in the kernel (a previous run's) are adopted with their ids, so a restart changes no route.
import type { KNexthop } from "./kernel-read.ts";
import { type Key, nexthopKey } from "./keys.ts";
import { NEXTHOP_ID_BASE, NEXTHOP_ID_RANGE, type Nexthop, type Route } from "./types.ts";
import { nexthopOf, validNexthop } from "./validate.ts";

/** Desired routes and our own nexthops number their device (keys.ts): both are few. */
const routeNhKey = (r: Route): Key => nexthopKey(r.via, r.dev, r.onlink, true);

export interface NhEntry {
  readonly key: Key;
  /** The nexthop itself, canonical (its id changes only when another took it: then a new value). */
  nh: Nexthop;
  readonly dev: string;
  /** The kernel has it (as far as we know). */
  applied: boolean;
  /** Desired routes through it. */
  want: number;
}

/**
 * Entries by nexthop id. Ours are handed out one after another from NEXTHOP_ID_BASE, so they index an array (8 bytes
 * each) instead of a map (10k peers: one nexthop each, 0.65 MB); an id outside our range (adopted from the kernel)
 * goes to a map.
 */
class IdIndex {
  private readonly dense: (NhEntry | undefined)[] = [];
  private readonly other = new Map<number, NhEntry>();

  get(id: number): NhEntry | undefined {
    const i = id - NEXTHOP_ID_BASE;
    return i >= 0 && i < NEXTHOP_ID_RANGE ? this.dense[i] : this.other.get(id);
  }

  has(id: number): boolean {
    return this.get(id) !== undefined;
  }

  set(id: number, e: NhEntry): void {
    const i = id - NEXTHOP_ID_BASE;
    if (i >= 0 && i < NEXTHOP_ID_RANGE) this.dense[i] = e;
    else this.other.set(id, e);
  }

  delete(id: number): void {
    const i = id - NEXTHOP_ID_BASE;
    if (i < 0 || i >= NEXTHOP_ID_RANGE) this.other.delete(id);
    else if (i === this.dense.length - 1) {
      this.dense.pop();
      while (this.dense.length > 0 && this.dense[this.dense.length - 1] === undefined) this.dense.pop();
    } else this.dense[i] = undefined;
  }
}

export class Nexthops {
  entries = new Map<Key, NhEntry>();
  byId = new IdIndex();
  /** Ids of nexthops that are not ours, or ours but stale: never handed out. */
  taken = new Set<number>();
  /** Keys whose want count dropped to 0: the next plan deletes (or forgets) them. */
  readonly dirty = new Set<Key>();
  /** Ids of our nexthops nobody can use (duplicates, groups): deleted after the routes by the next plan. */
  stale: number[] = [];
  private next = NEXTHOP_ID_BASE;

  /** A desired route through `r` appeared (+1) or went (-1). */
  ref(r: Route, delta: 1 | -1): void {
    const key = routeNhKey(r);
    let e = this.entries.get(key);
    if (!e) {
      if (delta < 0) return;
      e = { key, nh: nexthopOf(this.alloc(), r), dev: r.dev, applied: false, want: 0 };
      this.place(e);
    }
    e.want += delta;
    if (e.want <= 0) {
      e.want = 0;
      this.dirty.add(key);
    }
  }

  /** The entry a desired route goes through (present while the route is desired). */
  of(r: Route): NhEntry | undefined {
    return this.entries.get(routeNhKey(r));
  }

  /** Nobody wants it and the kernel no longer has it: its id is free again. */
  release(e: NhEntry): void {
    if (e.want > 0 || e.applied) return;
    if (this.entries.get(e.key) === e) this.entries.delete(e.key);
    if (this.byId.get(e.nh.id) === e) this.byId.delete(e.nh.id);
  }

  /**
   * Makes what the kernel has the applied view. Our nexthops (protocol `proto`) are adopted by key, keeping the id
   * we already use if the kernel has it; with `dropStale` (a full reconcile) ours that no route wants, duplicates and
   * shapes we never make are marked for deletion. Returns how many were marked.
   */
  adopt(list: KNexthop[], proto: number, dropStale: boolean): number {
    const old = this.entries;
    this.entries = new Map();
    this.byId = new IdIndex();
    this.taken = new Set();
    this.stale = [];
    this.dirty.clear();
    const ours = new Map<Key, KNexthop[]>();
    for (const n of list) {
      if (n.proto !== proto) {
        this.taken.add(n.id);
        continue;
      }
      if (n.special || n.via === undefined || n.dev === undefined) {
        this.taken.add(n.id);
        if (dropStale) this.stale.push(n.id);
        continue;
      }
      const key = nexthopKey(n.via, n.dev, n.onlink, true);
      const same = ours.get(key);
      if (same) same.push(n);
      else ours.set(key, [n]);
    }
    for (const [key, ns] of ours) {
      const prev = old.get(key);
      const chosen = ns.find((n) => n.id === prev?.nh.id) ?? ns[0]!;
      const nh = validNexthop({ id: chosen.id, via: chosen.via, dev: chosen.dev, onlink: chosen.onlink });
      const e: NhEntry = { key, nh, dev: nh.dev, applied: true, want: prev?.want ?? 0 };
      this.place(e);
      for (const n of ns) {
        if (n === chosen) continue;
        this.taken.add(n.id);
        if (dropStale) this.stale.push(n.id);
      }
      if (e.want === 0 && dropStale) this.dirty.add(key);
    }
    // Wanted ones the kernel lacks keep their id unless it is in use now (those get a new one once the rest are placed).
    const moved: NhEntry[] = [];
    for (const [key, e] of old) {
      if (this.entries.has(key) || e.want === 0) continue;
      const ne: NhEntry = { ...e, applied: false };
      if (this.taken.has(e.nh.id) || this.byId.has(e.nh.id)) moved.push(ne);
      else this.place(ne);
    }
    for (const e of moved) {
      e.nh = validNexthop({ ...e.nh, id: this.alloc() });
      this.place(e);
    }
    return this.stale.length + (dropStale ? this.dirty.size : 0);
  }

  private place(e: NhEntry): void {
    this.entries.set(e.key, e);
    this.byId.set(e.nh.id, e);
  }

  /** Everything on `dev` is gone from the kernel (device deleted, or set down: the kernel flushes its nexthops). */
  forgetOn(dev: string): NhEntry[] {
    const out: NhEntry[] = [];
    for (const e of this.entries.values()) {
      if (e.dev !== dev || !e.applied) continue;
      e.applied = false;
      out.push(e);
    }
    return out;
  }

  /** The next id neither ours nor anyone else's; bounded by the range. */
  private alloc(): number {
    for (let i = 0; i < NEXTHOP_ID_RANGE; i++) {
      const id = NEXTHOP_ID_BASE + ((this.next - NEXTHOP_ID_BASE + i) % NEXTHOP_ID_RANGE);
      if (this.taken.has(id) || this.byId.has(id)) continue;
      this.next = id + 1;
      return id;
    }
    throw new Error(`no free nexthop id in ${NEXTHOP_ID_BASE}..${NEXTHOP_ID_BASE + NEXTHOP_ID_RANGE - 1}`);
  }
}
