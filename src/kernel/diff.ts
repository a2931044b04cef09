// The reconciler's pure part: desired state (fragments keyed by id: "local", a peer's store key "subnets/10.5.7.0-24", ...) against what
// we believe the kernel has, turned into commands. It never reads the kernel or runs anything: kernel-read.ts reads,
// reconciler.ts schedules and runs. So every decision here is unit-tested without root (test/unit/kernel).
//
// set()/delete() diff a fragment against the previous one for the same id and mark only the changed keys dirty;
// planPeers() turns dirty keys into commands in dependency order:
//   route dels -> neigh dels -> fdb dels -> fdb adds -> neigh adds -> (nexthop add ->) route adds -> nexthop dels
// (ip, bridge, ip: three processes at most. A new peer gets FDB -> neighbour -> route, a removed one route ->
// neighbour -> FDB; flannel's neighbour -> FDB -> route (§5 of the compat notes) would take five, and only "route
// last when added, first when removed" matters to traffic), after a separate device/address step
// (takeDeviceWork/planDevices), since entries need their device.
//
// adoptKernel() replaces the "applied" view with what the kernel really has and dirties everything, so entries
// deleted by hand come back and entries we own that nobody desires (stale peers left by a previous run) go away. We
// own: routes and nexthop objects with our protocol number (nexthops.ts: routes go through them where the kernel
// has them), PERMANENT neighbours and FDB entries with a dst on owned devices, and the
// addresses on owned devices. Nothing else is ever touched.
import {
  addrDel,
  addrReplace,
  type Command,
  fdbDel,
  fdbReplace,
  linkAddVxlan,
  linkDel,
  linkSetMac,
  linkSetMtu,
  linkSetUp,
  linkSetVxlanLearning,
  neighDel,
  neighReplace,
  nexthopDel,
  nexthopReplace,
  routeDel,
  routeReplace,
  routeReplaceNh,
} from "./commands.ts";
import { type KLink, vxlanCompatible } from "./device-compat.ts";
import { globalAddresses, type KNexthop, type KRoute } from "./kernel-read.ts";
import { fdbKey, fdbKeyDev, type Key, neighKey, neighKeyDev, routeKey } from "./keys.ts";
import { type NhEntry, Nexthops } from "./nexthops.ts";
import type { KernelEvent } from "./monitor-events.ts";
import type { Address, Fdb, Neigh, Route, StateFragment, VxlanDevice } from "./types.ts";
import { validAddress, validFdb, validNeigh, validRoute, validVxlanDevice } from "./validate.ts";

export type { KRoute } from "./kernel-read.ts";

export interface ReconcileCounts {
  /** Desired entries the kernel did not have and we had never applied. */
  added: number;
  /** Entries we own that nobody desires, removed. */
  removed: number;
  /** Entries we had applied that were missing or different in the kernel (or a device fixed in place), re-applied. */
  repaired: number;
}

/** A desired entry: the validated value, naming the fragment that desires it (validate.ts with an id). */
type Owned<T> = T & { readonly id: string };

/** "The kernel has nothing under this key" (Table.appliedDiff: a desired key not applied yet). */
const ABSENT = Symbol("absent");

/** One kind of entry: who desires which value under a key, and what we believe the kernel has. */
export class Table<T extends object, K extends Key = Key> {
  /** The effective entry per key: of the fragment that set it most recently. */
  readonly desired = new Map<K, Owned<T>>();
  /** Keys several fragments desire (rare): the other fragments' entries, the most recent last. */
  private readonly shadowed = new Map<K, Owned<T>[]>();
  /**
   * What we believe the kernel has, only where that is not the desired entry itself: ABSENT for a desired key the
   * kernel lacks, the value the kernel has for a key whose desire changed since or that nobody desires. A kernel in
   * sync leaves it empty, so 10k peers keep one map per kind instead of two (three maps of 10,000 entries, ~2 MB).
   */
  private readonly appliedDiff = new Map<K, T | typeof ABSENT>();
  readonly dirty = new Set<K>();
  /** Called when the effective value under a key changes (routes: the nexthop reference counts). */
  onChange: ((before: T | undefined, after: T | undefined) => void) | null = null;
  /**
   * What an applied entry stands for once it is no longer the desired one (routes through nexthop objects: the entry
   * plus the nexthop id it went through); null: the entry itself.
   */
  asApplied: ((v: T) => T) | null = null;

  effective(key: K): T | undefined {
    return this.desired.get(key);
  }

  /** Every desired key with its effective value. */
  wanted(): MapIterator<[K, T]> {
    return this.desired.entries();
  }

  /** What we believe the kernel has under `key`. */
  appliedGet(key: K): T | undefined {
    const d = this.appliedDiff.get(key);
    if (d !== undefined) return d === ABSENT ? undefined : d;
    return this.desired.get(key);
  }

  appliedHas(key: K): boolean {
    return this.appliedGet(key) !== undefined;
  }

  /** How many keys the applied view keeps a value or ABSENT for (0 when the kernel has exactly what is desired). */
  get appliedKept(): number {
    return this.appliedDiff.size;
  }

  /** The kernel has `v` under `key` now (a command that sent it succeeded). */
  setApplied(key: K, v: T): void {
    if (v === this.desired.get(key)) this.appliedDiff.delete(key);
    else this.appliedDiff.set(key, this.asApplied ? this.asApplied(v) : v);
  }

  /** The kernel has nothing under `key` now. */
  unapply(key: K): void {
    if (this.desired.has(key)) this.appliedDiff.set(key, ABSENT);
    else this.appliedDiff.delete(key);
  }

  /** Every key the kernel has something under, with the value (unapply() of the current key is safe meanwhile). */
  *appliedEntries(): Generator<[K, T]> {
    for (const [k, v] of this.desired) if (!this.appliedDiff.has(k)) yield [k, v];
    for (const [k, v] of this.appliedDiff) if (v !== ABSENT) yield [k, v];
  }

  /**
   * `actual` (what the kernel has, by key) becomes the applied view. An entry equal to the desired one (`eq(wanted,
   * actual)`) is recorded as the desired entry itself: nothing is kept for it.
   */
  adoptApplied(actual: Map<K, T>, eq: (want: T, have: T) => boolean): void {
    this.appliedDiff.clear();
    for (const [k, want] of this.desired) {
      const a = actual.get(k);
      if (a === undefined) this.appliedDiff.set(k, ABSENT);
      else if (!eq(want, a)) this.appliedDiff.set(k, a);
    }
    for (const [k, a] of actual) if (!this.desired.has(k)) this.appliedDiff.set(k, a);
  }

  /** Applied desired entries stop standing for themselves: each is kept as `copy` of it (a mode switch, useNexthops). */
  detachApplied(copy: (v: T) => T): void {
    for (const [k, v] of this.desired) if (!this.appliedDiff.has(k)) this.appliedDiff.set(k, copy(v));
  }

  /** What `id` desires under `key`, if anything. */
  valueOf(key: K, id: string): Owned<T> | undefined {
    const e = this.desired.get(key);
    if (e === undefined || e.id === id) return e;
    return this.shadowed.get(key)?.find((x) => x.id === id);
  }

  /** `entry` (of the fragment entry.id) is desired under `key`: when several fragments desire one key, the most recent set() wins. */
  upsert(key: K, entry: Owned<T>): void {
    const before = this.desired.get(key);
    if (before !== undefined && before.id !== entry.id) {
      const list = this.shadowed.get(key);
      if (list) {
        const i = list.findIndex((x) => x.id === entry.id);
        if (i >= 0) list.splice(i, 1);
        list.push(before);
      } else this.shadowed.set(key, [before]);
    }
    this.keepApplied(key, before);
    this.desired.set(key, entry);
    this.settleApplied(key, entry);
    this.dirty.add(key);
    if (this.onChange) this.onChange(before, entry);
  }

  remove(key: K, id: string): void {
    const before = this.desired.get(key);
    if (before === undefined) return;
    const list = this.shadowed.get(key);
    if (before.id === id) {
      const next = list?.pop();
      this.keepApplied(key, before);
      if (next) this.desired.set(key, next);
      else this.desired.delete(key);
      this.settleApplied(key, next);
      if (list?.length === 0) this.shadowed.delete(key);
      if (this.onChange) this.onChange(before, next);
    } else {
      const i = list ? list.findIndex((x) => x.id === id) : -1;
      if (i < 0) return;
      list!.splice(i, 1);
      if (list!.length === 0) this.shadowed.delete(key);
    }
    this.dirty.add(key);
  }

  /** The effective entry under `key` is about to change from `before`: what the kernel has there is kept as it is. */
  private keepApplied(key: K, before: Owned<T> | undefined): void {
    if (this.appliedDiff.has(key)) return;
    this.appliedDiff.set(key, before === undefined ? ABSENT : this.asApplied ? this.asApplied(before) : before);
  }

  /** After the change: an applied value that is the new effective entry itself needs no record. */
  private settleApplied(key: K, after: Owned<T> | undefined): void {
    const d = this.appliedDiff.get(key);
    if (after === undefined ? d === ABSENT : d === after) this.appliedDiff.delete(key);
  }
}

/** A desired device, address, route, neighbour or FDB entry, as a fragment keeps it. */
type AnyEntry = Owned<VxlanDevice> | Owned<Address> | Owned<Route> | Owned<Neigh> | Owned<Fdb>;

/** Addresses and devices are few: string keys. */
export const devKey = (dev: string, x: string) => `${dev} ${x}`; // device names hold no spaces
export const keyDev = (key: string) => key.slice(0, key.indexOf(" "));

const routeEq = (a: KRoute, b: KRoute): boolean => a.dst === b.dst && a.via === b.via && a.dev === b.dev && a.onlink === b.onlink;
const neighEq = (a: Neigh, b: Neigh) => a.lladdr === b.lladdr && a.ip === b.ip && a.dev === b.dev;
const fdbEq = (a: Fdb, b: Fdb) => a.dst === b.dst && a.mac === b.mac && a.dev === b.dev;
const deviceEq = (a: VxlanDevice, b: VxlanDevice) => JSON.stringify(a) === JSON.stringify(b);

/** The device step's work, taken off the dirty sets (put back with redoDevices if it cannot finish). */
export interface DeviceWork {
  devs: string[];
  addrDevs: Set<string>;
  /** Address keys that were dirty: desired before, so they may be removed even on a device we do not own. */
  addrKeys: Set<string>;
}

export interface DevicePlan {
  cmds: Command[];
  /** Devices (re)created by cmds: they hold nothing yet. */
  fresh: Set<string>;
  /** Decisions worth a log line. */
  notes: string[];
}

/** Peer-entry commands with, per command, the table, key and value (undefined: a delete) to record when it succeeds. */
export interface PeerPlan {
  cmds: Command[];
  tables: (Table<KRoute> | Table<Neigh> | Table<Fdb> | Nexthops | null)[];
  keys: Key[];
  /** For a nexthop: its id when added, undefined when deleted. */
  values: (KRoute | Neigh | Fdb | number | undefined)[];
}

/** A peer plan whose arrays fill as `commands` is iterated (once). */
export interface PeerStream extends PeerPlan {
  commands: Iterable<Command>;
}

/** What a full read of the kernel found (kernel-read.ts). */
export interface KernelSnapshot {
  present: Set<string>;
  routes: KRoute[];
  neighs: Map<string, Neigh[]>;
  fdbs: Map<string, Fdb[]>;
  /** Every nexthop object (read only when routes go through them). */
  nexthops?: KNexthop[];
}

export class DesiredState {
  /** Per fragment id, its validated entries (the same objects the tables hold): one array per peer. */
  private readonly fragments = new Map<string, AnyEntry[]>();
  readonly devices = new Table<VxlanDevice, string>();
  readonly addresses = new Table<Address, string>();
  readonly routes = new Table<KRoute>();
  readonly neighs = new Table<Neigh>();
  readonly fdbs = new Table<Fdb>();
  /** The nexthop objects our routes go through, once useNexthops() turned them on (else plain gateway routes). */
  readonly nexthops = new Nexthops();
  private nhMode = false;
  /** Ids of our nexthops the monitor saw deleted since the last plan. */
  private readonly lostNexthops = new Set<number>();
  /** FDB remotes found in the kernel that nobody desires (a MAC can have several): removed by the next planPeers. */
  private staleFdbs: Fdb[] = [];
  /** Devices whose addresses the device step checks even if nothing about them is dirty. */
  private readonly addrCheck = new Set<string>();
  /** Last up/down state the monitor reported per link, to see a link come back up. */
  private readonly linkUp = new Map<string, boolean>();
  counts: ReconcileCounts = { added: 0, removed: 0, repaired: 0 };

  constructor(readonly proto: number) {}

  /** Routes go through nexthop objects from now on; `existing` (the kernel's) are adopted, never deleted here. */
  useNexthops(existing: KNexthop[]): void {
    const nh = this.nexthops;
    // A route applied as desired stands for itself through its nexthop's current id (routeOk), or before the switch
    // for a plain gateway route: the applied ones are kept as copies that say which, before the nexthops change.
    this.routes.detachApplied(this.routes.asApplied ?? ((r) => ({ ...r })));
    if (!this.nhMode) {
      this.nhMode = true;
      this.routes.asApplied = (r) => ({ ...r, nhid: nh.of(r as Route)?.nh.id });
      for (const [, r] of this.routes.wanted()) nh.ref(r as Route, 1);
      this.routes.onChange = (before, after) => {
        if (before) nh.ref(before as Route, -1);
        if (after) nh.ref(after as Route, 1);
      };
    }
    this.nexthops.adopt(existing, this.proto, false);
    for (const k of this.routes.desired.keys()) this.routes.dirty.add(k);
  }

  get usesNexthops(): boolean {
    return this.nhMode;
  }

  /** A route in the kernel is right when it has the wanted gateway/device/onlink, through our nexthop if we use them. */
  private readonly routeOk = (want: KRoute, have: KRoute): boolean => {
    // The desired entry itself: applied as it is, through its nexthop's id (Table.appliedDiff).
    if (have === want) return !this.nhMode || this.nexthops.of(want as Route)?.applied === true;
    if (!routeEq(want, have)) return false;
    if (!this.nhMode) return have.nhid === undefined;
    const e = this.nexthops.of(want as Route);
    return e?.applied === true && have.nhid === e.nh.id;
  };

  /** Desires `fragment` under `id`, replacing what that id desired before. Throws (changing nothing) on invalid values. */
  set(id: string, fragment: StateFragment): void {
    const next = normalize(fragment, id);
    const prev = this.fragments.get(id);
    // An entry equal to the one already desired stays (the fragment keeps that one): one copy per entry.
    for (let i = 0; i < next.length; i++) {
      const e = next[i]!;
      const t = this.tableOf(e);
      const key = this.keyOf(e, true);
      const old = prev ? (t.valueOf(key, id) as AnyEntry | undefined) : undefined;
      if (old !== undefined && this.same(e, old)) next[i] = old;
      else t.upsert(key, e);
    }
    if (prev) {
      for (const p of prev) {
        const t = this.tableOf(p);
        const key = this.keyOf(p, false);
        if (!next.some((e) => this.tableOf(e) === t && this.keyOf(e, false) === key)) t.remove(key, id);
      }
    }
    this.fragments.set(id, next);
  }

  has(id: string): boolean {
    return this.fragments.has(id);
  }

  /** Stops desiring what `id` desired; entries nobody else desires become deletes. False if `id` desired nothing. */
  delete(id: string): boolean {
    const prev = this.fragments.get(id);
    if (!prev) return false;
    this.fragments.delete(id);
    for (const e of prev) this.tableOf(e).remove(this.keyOf(e, false), id);
    return true;
  }

  /** The table an entry belongs in, told by its shape (validate.ts makes each kind with its own fields). */
  private tableOf(e: AnyEntry): Table<AnyEntry> {
    const t =
      "vni" in e ? this.devices : "cidr" in e ? this.addresses : "lladdr" in e ? this.neighs : "onlink" in e ? this.routes : this.fdbs;
    return t as unknown as Table<AnyEntry>;
  }

  private keyOf(e: AnyEntry, add: boolean): Key {
    if ("vni" in e) return e.name;
    if ("cidr" in e) return devKey(e.dev, e.cidr);
    if ("lladdr" in e) return neighKey(e.dev, e.ip, add);
    if ("onlink" in e) return routeKey(e.dst);
    return fdbKey(e.dev, e.mac, add);
  }

  /** Two entries of one kind and key with the same value. */
  private same(a: AnyEntry, b: AnyEntry): boolean {
    if ("vni" in a) return deviceEq(a, b as VxlanDevice);
    if ("cidr" in a) return true; // addresses: the key is the whole value
    if ("lladdr" in a) return neighEq(a, b as Neigh);
    if ("onlink" in a) return routeEq(a, b as Route);
    return fdbEq(a, b as Fdb);
  }

  resetCounts(): ReconcileCounts {
    const c = this.counts;
    this.counts = { added: 0, removed: 0, repaired: 0 };
    return c;
  }

  /** The owned devices plus every device we desire. */
  ownedSet(owned: Iterable<string>): Set<string> {
    const s = new Set(owned);
    for (const k of this.devices.desired.keys()) s.add(k);
    return s;
  }

  hasDeviceWork(): boolean {
    return this.devices.dirty.size > 0 || this.addresses.dirty.size > 0 || this.addrCheck.size > 0;
  }

  /** Takes the dirty devices and addresses for one device step. */
  takeDeviceWork(): DeviceWork {
    const devs = [...this.devices.dirty];
    const addrDevs = new Set<string>(this.addrCheck);
    for (const k of this.addresses.dirty) addrDevs.add(keyDev(k));
    for (const d of devs) addrDevs.add(d);
    const addrKeys = new Set(this.addresses.dirty);
    this.devices.dirty.clear();
    this.addresses.dirty.clear();
    this.addrCheck.clear();
    return { devs, addrDevs, addrKeys };
  }

  /** Puts back what one device step took on, so the next drain does it again. */
  redoDevices(w: DeviceWork): void {
    for (const d of w.devs) this.devices.dirty.add(d);
    for (const d of w.addrDevs) this.addrCheck.add(d);
    for (const k of w.addrKeys) this.addresses.dirty.add(k);
  }

  /** Device and address commands for `w`, given the links as `ip -d addr show` reports them. */
  planDevices(w: DeviceWork, links: KLink[], ownedDevices: Iterable<string>): DevicePlan {
    const byName = new Map(links.map((l) => [l.ifname, l]));
    const owned = this.ownedSet(ownedDevices);
    const cmds: Command[] = [];
    const upCmds: Command[] = [];
    const fresh = new Set<string>();
    const notes: string[] = [];
    for (const name of w.devs) {
      const want = this.devices.effective(name);
      const have = byName.get(name);
      if (!want) {
        // Nobody desires it any more: remove it if it is (still) a vxlan device.
        if (have?.linkinfo?.info_kind === "vxlan") {
          cmds.push(linkDel(name));
          this.counts.removed++;
        }
        this.devices.unapply(name);
        this.forgetEntriesOn(name, false);
        continue;
      }
      if (!have || !vxlanCompatible(want, have)) {
        if (have) {
          notes.push(`device ${name} is incompatible with the wanted vxlan ${want.vni}: recreating it`);
          cmds.push(linkDel(name));
        }
        cmds.push(linkAddVxlan(want));
        upCmds.push(linkSetUp(name));
        fresh.add(name);
        if (this.devices.appliedHas(name) || have) this.counts.repaired++;
        else this.counts.added++;
        continue;
      }
      // Compatible: reuse (keeps the ifindex and whatever rides on it), fix what may differ in place.
      let fixed = false;
      if (have.mtu !== want.mtu) (fixed = true), cmds.push(linkSetMtu(name, want.mtu));
      if (have.address?.toLowerCase() !== want.mac) (fixed = true), cmds.push(linkSetMac(name, want.mac));
      if ((have.linkinfo?.info_data?.learning === true) !== want.learning)
        (fixed = true), cmds.push(linkSetVxlanLearning(name, want.learning));
      if (!have.flags?.includes("UP")) (fixed = true), upCmds.push(linkSetUp(name));
      if (fixed) this.counts.repaired++;
    }

    // Addresses: desired ones present, other global ones gone (on owned devices, or ones we desired before).
    for (const dev of w.addrDevs) {
      const link = byName.get(dev);
      if (!link && !this.devices.effective(dev)) continue; // nothing to do on a device that is not there
      const actual = link && !fresh.has(dev) ? globalAddresses(dev, link) : new Set<string>();
      const wanted = new Set<string>();
      for (const [k, a] of this.addresses.wanted()) if (keyDev(k) === dev) wanted.add(a.cidr);
      for (const cidr of actual) {
        if (wanted.has(cidr)) continue;
        if (owned.has(dev) || w.addrKeys.has(devKey(dev, cidr))) {
          cmds.push(addrDel({ dev, cidr }));
          this.counts.removed++;
        }
      }
      for (const cidr of wanted) {
        if (actual.has(cidr)) continue;
        cmds.push(addrReplace({ dev, cidr }));
        if (!fresh.has(dev) && this.addresses.appliedHas(devKey(dev, cidr))) this.counts.repaired++;
        else if (!fresh.has(dev)) this.counts.added++;
      }
      for (const cidr of wanted) this.addresses.setApplied(devKey(dev, cidr), { dev, cidr });
    }
    cmds.push(...upCmds);
    return { cmds, fresh, notes };
  }

  /** Records the outcome of a device plan; on failure everything in `w` is done again by the next drain. */
  devicesDone(w: DeviceWork, plan: DevicePlan, ok: boolean): void {
    // A (re)created device holds nothing: what we had applied on it must be added again.
    for (const name of plan.fresh) this.forgetEntriesOn(name, true);
    if (!ok) {
      this.redoDevices(w);
      return;
    }
    for (const name of w.devs) {
      const want = this.devices.effective(name);
      if (want) this.devices.setApplied(name, want);
    }
  }

  /** Commands for every dirty route, neighbour and FDB key (and stale FDB remotes); clears the dirty sets. */
  planPeers(): PeerPlan {
    const plan = this.streamPeers();
    for (const _ of plan.commands);
    return plan;
  }

  /**
   * planPeers() as a stream: the dirty keys (with their values) are taken now, the commands are made as `commands` is
   * iterated (the queue pulls it while earlier lines already run). Changes made meanwhile are the next plan's.
   */
  streamPeers(): PeerStream {
    this.unapplyLostRoutes();
    const rAdd = new Work<KRoute>();
    const rDel = new Work<KRoute>();
    const nAdd = new Work<Neigh>();
    const nDel = new Work<Neigh>();
    const fAdd = new Work<Fdb>();
    const fDel = new Work<Fdb>();
    split(this.routes, this.routeOk, rAdd, rDel);
    split(this.neighs, neighEq, nAdd, nDel);
    split(this.fdbs, fdbEq, fAdd, fDel);
    const stale = this.staleFdbs;
    this.staleFdbs = [];
    const NH = this.nexthops;
    // Each route's nexthop entry now: it stays while the route is desired (a route set meanwhile is dirty again).
    const rNh = this.nhMode ? rAdd.values.map((v) => NH.of(v as Route)) : [];
    const nhDirty = [...NH.dirty];
    NH.dirty.clear();
    const nhStale = NH.stale;
    NH.stale = [];
    const plan: PeerStream = { cmds: [], tables: [], keys: [], values: [], commands: [] };
    plan.commands = this.peerCommands(plan, { rAdd, rDel, nAdd, nDel, fAdd, fDel, stale, rNh, nhDirty, nhStale });
    return plan;
  }

  private *peerCommands(plan: PeerPlan, w: PeerWork): Generator<Command> {
    const R = this.routes;
    const N = this.neighs;
    const F = this.fdbs;
    const NH = this.nexthops;
    // Parallel arrays (no closure per op) keep 30,000 ops cheap.
    const op = (c: Command, t: PeerPlan["tables"][number], k: Key, v: PeerPlan["values"][number]): Command => {
      plan.cmds.push(c);
      plan.tables.push(t);
      plan.keys.push(k);
      plan.values.push(v);
      return c;
    };
    for (let i = 0; i < w.rDel.keys.length; i++) yield op(routeDel(w.rDel.values[i]!, this.proto), R, w.rDel.keys[i]!, undefined);
    // In the header's order: ip, bridge, ip (a new peer's route last, a removed one's first).
    for (let i = 0; i < w.nDel.keys.length; i++) yield op(neighDel(w.nDel.values[i]!), N, w.nDel.keys[i]!, undefined);
    for (const f of w.stale) yield op(fdbDel(f), null, "", undefined);
    for (let i = 0; i < w.fDel.keys.length; i++) yield op(fdbDel(w.fDel.values[i]!), F, w.fDel.keys[i]!, undefined);
    for (let i = 0; i < w.fAdd.keys.length; i++) {
      const v = w.fAdd.values[i]!;
      yield op(fdbReplace(v), F, w.fAdd.keys[i]!, v);
    }
    for (let i = 0; i < w.nAdd.keys.length; i++) {
      const v = w.nAdd.values[i]!;
      yield op(neighReplace(v), N, w.nAdd.keys[i]!, v);
    }
    for (let i = 0; i < w.rAdd.keys.length; i++) {
      const k = w.rAdd.keys[i]!;
      const v = w.rAdd.values[i]! as Route;
      const e = w.rNh[i];
      if (!e) {
        yield op(routeReplace(v, this.proto), R, k, v);
        continue;
      }
      // The nexthop before the first route through it (applied is set now so it is sent once; undone on failure).
      if (!e.applied) {
        e.applied = true;
        yield op(nexthopReplace(e.nh, this.proto), NH, e.key, e.nh.id);
      }
      yield op(routeReplaceNh(v, e.nh.id, this.proto), R, k, v); // recorded as the entry itself: through e's id
    }
    // Nexthops nobody wants, after the routes that used them were deleted or moved to another one.
    for (const key of w.nhDirty) {
      const e = NH.entries.get(key);
      if (!e || e.want > 0) continue;
      if (!e.applied) NH.release(e);
      else {
        e.applied = false; // now, so the monitor's echo of our own delete costs nothing
        yield op(nexthopDel(e.nh.id), NH, key, undefined);
      }
    }
    for (const id of w.nhStale) yield op(nexthopDel(id), null, "", undefined);
  }

  /** Records which commands of a peer plan succeeded. A failed entry stays as it was in `applied`. */
  peersDone(plan: PeerPlan, ok: (i: number) => boolean): void {
    for (let i = 0; i < plan.cmds.length; i++) {
      const t = plan.tables[i];
      if (t instanceof Nexthops) {
        this.nexthopDone(t, plan.keys[i]!, plan.values[i] as number | undefined, ok(i));
        continue;
      }
      if (!t || !ok(i)) continue;
      const v = plan.values[i];
      if (v === undefined) t.unapply(plan.keys[i]!);
      else (t as Table<object>).setApplied(plan.keys[i]!, v as object);
    }
  }

  /** A nexthop add (id) or delete (undefined) finished; its applied flag was set when it was planned. */
  private nexthopDone(nh: Nexthops, key: Key, id: number | undefined, ok: boolean): void {
    const e = nh.entries.get(key);
    if (!e) return;
    if (id === undefined) {
      if (ok) nh.release(e);
      else if (e.want === 0) (e.applied = true), nh.dirty.add(key); // still there: the next plan tries again
    } else if (!ok && e.nh.id === id) e.applied = false;
  }

  /**
   * Routes we applied through a lost nexthop are gone with it: unapplied, and dirty if still desired. One pass over
   * the routes per drain, however many nexthops went (`ip nexthop flush` is one event per nexthop).
   */
  private unapplyLostRoutes(): void {
    const lost = this.lostNexthops;
    if (lost.size === 0) return;
    const R = this.routes;
    for (const [k, v] of R.appliedEntries()) {
      // The desired entry itself went through its nexthop's id; any other value names the id it went through.
      const nhid = v === R.desired.get(k) ? this.nexthops.of(v as Route)?.nh.id : v.nhid;
      if (nhid === undefined || !lost.has(nhid)) continue;
      R.unapply(k);
      if (this.routes.desired.has(k)) this.routes.dirty.add(k);
    }
    lost.clear();
  }

  /**
   * What the kernel monitor saw, turned into repairs of only what changed: an entry we applied that went away is
   * marked unapplied (and dirty, if still desired); a device deleted, or set down, is redone by the device step; a
   * link coming up gets every entry on it (and on vxlan devices riding on it) re-applied, since the kernel drops
   * IPv4 routes of a link going down without a word. True if something needs a drain.
   */
  noticeEvent(ev: KernelEvent): boolean {
    switch (ev.kind) {
      case "route":
        return this.lost(this.routes, routeKey(ev.dst), (v) => ev.dev === undefined || v.dev === undefined || v.dev === ev.dev);
      case "neigh":
        return this.lost(this.neighs, neighKey(ev.dev, ev.ip), () => true);
      case "fdb":
        return this.lost(this.fdbs, fdbKey(ev.dev, ev.mac), (v) => ev.dst === undefined || v.dst === ev.dst);
      case "nexthop": {
        // Deleting a nexthop deletes the routes through it without a route event.
        const e = this.nexthops.byId.get(ev.id);
        if (!e?.applied) return false;
        e.applied = false;
        this.lostNexthops.add(e.nh.id);
        this.nexthops.release(e);
        return true; // the drain finds the routes that went with it
      }
      case "addr":
        if (!this.devices.desired.has(ev.dev) && !this.hasAddressOn(ev.dev)) return false;
        this.addrCheck.add(ev.dev);
        return true;
      case "link": {
        const was = this.linkUp.get(ev.dev);
        if (ev.deleted) this.linkUp.delete(ev.dev);
        else this.linkUp.set(ev.dev, ev.up);
        const ours = this.devices.desired.has(ev.dev);
        if (ev.deleted) {
          this.forgetEntriesOn(ev.dev, false);
          if (ours) this.devices.dirty.add(ev.dev);
          return ours;
        }
        if (ours && !ev.up) {
          this.devices.dirty.add(ev.dev); // set down by hand: the device step sets it up again
          return true;
        }
        if (!ev.up || was !== false) return false; // only a down -> up transition loses entries
        let any = this.forgetEntriesOn(ev.dev, true);
        for (const [name, d] of this.devices.wanted()) {
          if (d.underlay !== ev.dev) continue;
          this.devices.dirty.add(name);
          this.forgetEntriesOn(name, true);
          any = true;
        }
        return any || ours;
      }
    }
  }

  /** Devices whose neighbours and FDB a full read must list: owned ones, and others only where we desire a key. */
  devicesToRead(ownedDevices: Iterable<string>, present: Set<string>): { neighDevs: string[]; fdbDevs: string[] } {
    const owned = this.ownedSet(ownedDevices);
    const neighDevs = new Set(owned);
    for (const k of this.neighs.desired.keys()) neighDevs.add(neighKeyDev(k));
    const fdbDevs = new Set(owned);
    for (const k of this.fdbs.desired.keys()) fdbDevs.add(fdbKeyDev(k));
    return { neighDevs: [...neighDevs].filter((d) => present.has(d)), fdbDevs: [...fdbDevs].filter((d) => present.has(d)) };
  }

  /** Replaces the applied view with what the kernel has, counts differences and marks everything dirty. */
  adoptKernel(k: KernelSnapshot, ownedDevices: Iterable<string>): void {
    const owned = this.ownedSet(ownedDevices);
    // Devices and addresses: re-checked by the device step.
    for (const d of this.devices.desired.keys()) this.devices.dirty.add(d);
    for (const d of owned) if (k.present.has(d)) this.addrCheck.add(d);
    for (const key of this.addresses.desired.keys()) this.addrCheck.add(keyDev(key));

    // Nexthops first (a route is right only through our nexthop); ours that no route wants are removed after the routes.
    if (this.nhMode && k.nexthops) this.counts.removed += this.nexthops.adopt(k.nexthops, this.proto, true);
    this.lostNexthops.clear(); // the routes read now are what the kernel has
    // Routes: all with our proto are ours.
    const actualRoutes = new Map<Key, KRoute>();
    for (const r of k.routes) actualRoutes.set(routeKey(r.dst), r);
    this.adopt(this.routes, actualRoutes, this.routeOk);

    const actualNeighs = new Map<Key, Neigh>();
    for (const [dev, list] of k.neighs) {
      for (const n of list) {
        const key = neighKey(dev, n.ip, owned.has(dev));
        if (owned.has(dev) || this.neighs.desired.has(key)) actualNeighs.set(key, n);
      }
    }
    this.adopt(this.neighs, actualNeighs, neighEq);

    // A MAC may have several remotes; the one we desire is adopted, all others are stale.
    const actualFdbs = new Map<Key, Fdb>();
    for (const [dev, list] of k.fdbs) {
      for (const f of list) {
        const key = fdbKey(dev, f.mac, owned.has(dev));
        const want = this.fdbs.effective(key);
        if (want && want.dst === f.dst) actualFdbs.set(key, f);
        else if (want || owned.has(dev)) {
          this.staleFdbs.push(f);
          this.counts.removed++;
        }
      }
    }
    for (const key of this.fdbs.desired.keys()) {
      if (actualFdbs.has(key)) continue;
      if (this.fdbs.appliedHas(key)) this.counts.repaired++;
      else this.counts.added++;
    }
    this.fdbs.adoptApplied(actualFdbs, fdbEq);
    for (const key of this.fdbs.desired.keys()) this.fdbs.dirty.add(key);
  }

  /** Counts differences between kernel and desire (eq(wanted, actual)), then makes the kernel view the applied one and dirties all keys. */
  private adopt<T extends object>(t: Table<T>, actual: Map<Key, T>, eq: (a: T, b: T) => boolean): void {
    for (const [k, want] of t.wanted()) {
      const a = actual.get(k);
      if (a !== undefined && eq(want, a)) continue;
      if (a === undefined && !t.appliedHas(k)) this.counts.added++;
      else this.counts.repaired++;
    }
    for (const k of actual.keys()) if (!t.desired.has(k)) this.counts.removed++;
    t.adoptApplied(actual, eq);
    for (const k of actual.keys()) t.dirty.add(k);
    for (const k of t.desired.keys()) t.dirty.add(k);
  }

  /** An applied entry the kernel no longer has: unapplied, and dirty if still desired. True if it needs a drain. */
  private lost<T extends object>(t: Table<T>, key: Key, matches: (v: T) => boolean): boolean {
    const v = t.appliedGet(key);
    if (v === undefined || !matches(v)) return false;
    t.unapply(key);
    if (!t.desired.has(key)) return false;
    t.dirty.add(key);
    return true;
  }

  private hasAddressOn(dev: string): boolean {
    for (const k of this.addresses.desired.keys()) if (keyDev(k) === dev) return true;
    return false;
  }

  /**
   * A device was deleted, (re)created or came back up: whatever we applied on it is gone; with `readd`, desired
   * entries on it (also those not applied yet) are marked to be added again. True if any was marked.
   */
  private forgetEntriesOn(dev: string, readd: boolean): boolean {
    let any = false;
    const forget = <T extends { dev?: string }>(t: Table<T>) => {
      for (const [k, v] of t.appliedEntries()) if (v.dev === dev) t.unapply(k);
      if (!readd) return;
      for (const [k, v] of t.wanted()) {
        if (v.dev !== dev) continue;
        t.dirty.add(k);
        any = true;
      }
    };
    forget(this.routes);
    this.nexthops.forgetOn(dev); // the kernel flushes a device's nexthops (and their routes) silently
    forget(this.neighs);
    forget(this.fdbs);
    return any;
  }
}

/** Keys with the value to add (the desired one) or to delete (the applied one), as parallel arrays. */
class Work<T> {
  readonly keys: Key[] = [];
  readonly values: T[] = [];
  push(k: Key, v: T): void {
    this.keys.push(k);
    this.values.push(v);
  }
}

/** What a peer stream sends, taken when it was made. */
interface PeerWork {
  rAdd: Work<KRoute>;
  rDel: Work<KRoute>;
  nAdd: Work<Neigh>;
  nDel: Work<Neigh>;
  fAdd: Work<Fdb>;
  fDel: Work<Fdb>;
  stale: Fdb[];
  /** rAdd's nexthop entries (routes through nexthop objects), by index. */
  rNh: (NhEntry | undefined)[];
  nhDirty: Key[];
  nhStale: number[];
}

/** Dirty keys -> keys to (re)add and keys to delete, with their values; clears the dirty set. */
function split<T extends object>(t: Table<T>, eq: (a: T, b: T) => boolean, add: Work<T>, del: Work<T>): void {
  for (const k of t.dirty) {
    const want = t.effective(k);
    const have = t.appliedGet(k);
    if (want !== undefined) {
      if (have === undefined || !eq(want, have)) add.push(k, want);
    } else if (have !== undefined) del.push(k, have);
  }
  t.dirty.clear();
}

const NONE: never[] = [];

/** Validates a fragment into its entries, each naming `id` (plain loops: this runs once per peer on the 10k path). */
function normalize(f: StateFragment, id: string): AnyEntry[] {
  if (typeof f !== "object" || f === null) throw new TypeError("state fragment must be an object");
  const out: AnyEntry[] = [];
  add(out, f.devices, "devices", validVxlanDevice, id);
  add(out, f.addresses, "addresses", validAddress, id);
  add(out, f.routes, "routes", validRoute, id);
  add(out, f.neighs, "neighs", validNeigh, id);
  add(out, f.fdbs, "fdbs", validFdb, id);
  return out.length === 0 ? NONE : out;
}

/** Each entry of one list of a fragment, validated with its owner. */
function add<T>(out: AnyEntry[], list: T[] | undefined, what: string, valid: (x: unknown, id: string) => T, id: string): void {
  if (list === undefined) return;
  if (!Array.isArray(list)) throw new TypeError(`state fragment ${what} must be an array`);
  for (const x of list) out.push(valid(x, id) as unknown as AnyEntry);
}
