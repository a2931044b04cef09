// Applies desired kernel state (fragments keyed by id: "local", "peer:10.5.7.0/24", ...) through the CommandQueue.
//
// Incremental path: set()/delete() diff a fragment against the previous one for the same id and mark only the changed
// keys dirty; a drain (a few ms later, or on flush()) turns dirty keys into commands. A drain sends, in one runAll():
//   route dels -> fdb dels -> neigh dels -> neigh adds -> fdb adds -> route adds
// (a new peer gets neighbour -> FDB -> route as flannel does, a removed one route -> FDB -> neighbour; §5 of the compat
// notes), preceded by a separate device/address step, since entries need their device to exist and be up.
//
// Full path: fullReconcile() reads what the kernel really has, replaces the "applied" view with it and drains again,
// so entries deleted by hand come back and entries we own that nobody desires (stale peers left by a previous run)
// go away. We own: routes with our protocol number, PERMANENT neighbours and FDB entries with a dst on owned devices,
// and the addresses on owned devices. Nothing else is ever touched.
import { consola } from "consola";
import {
  addrDel,
  addrReplace,
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
  routeDel,
  routeReplace,
  type Command,
} from "./commands.ts";
import { bridgeJson, ipJson, type CommandQueue } from "./queue.ts";
import { ROUTE_PROTO, type Address, type Fdb, type Neigh, type Route, type StateFragment, type VxlanDevice } from "./types.ts";
import { validAddress, validDevName, validFdb, validIP, validNeigh, validNet, validRoute, validVxlanDevice } from "./validate.ts";

const log = consola.withTag("reconciler");

export interface ReconcilerOptions {
  /** Devices the agent owns: everything on them that looks like ours may be removed. */
  ownedDevices: (() => string[]) | string[];
  /** Protocol number our routes carry. Default ROUTE_PROTO. */
  routeProto?: number;
  /** Network namespace for reads (the queue must use the same one for writes). */
  netns?: string;
  /** Period of the full reconcile started by start(). Default 10 s. */
  fullIntervalMs?: number;
  /** How long set()/delete() wait for more changes before a drain starts. Default 5 ms. */
  coalesceMs?: number;
}

export interface ReconcileCounts {
  /** Desired entries the kernel did not have and we had never applied. */
  added: number;
  /** Entries we own that nobody desires, removed. */
  removed: number;
  /** Entries we had applied that were missing or different in the kernel (or a device fixed in place), re-applied. */
  repaired: number;
}

/** A route as read back from the kernel: gateway and device may be absent on routes someone else tagged with our proto. */
interface KRoute {
  dst: string;
  via?: string;
  dev?: string;
  onlink: boolean;
}

interface Owner<T> {
  id: string;
  value: T;
}

/** One kind of entry: who desires which value under a key, and what we believe the kernel has. */
class Table<T> {
  readonly desired = new Map<string, Owner<T>[]>();
  readonly applied = new Map<string, T>();
  readonly dirty = new Set<string>();

  /** When several fragments desire one key, the most recent set() wins. */
  effective(key: string): T | undefined {
    const o = this.desired.get(key);
    return o === undefined ? undefined : o[o.length - 1]!.value;
  }

  upsert(key: string, id: string, value: T): void {
    const o = this.desired.get(key);
    if (o === undefined) this.desired.set(key, [{ id, value }]);
    else {
      const i = o.findIndex((x) => x.id === id);
      if (i >= 0) o.splice(i, 1);
      o.push({ id, value });
    }
    this.dirty.add(key);
  }

  remove(key: string, id: string): void {
    const o = this.desired.get(key);
    if (!o) return;
    const i = o.findIndex((x) => x.id === id);
    if (i < 0) return;
    o.splice(i, 1);
    if (o.length === 0) this.desired.delete(key);
    this.dirty.add(key);
  }
}

interface Entry<T> {
  key: string;
  value: T;
}

interface NormFragment {
  devices: Entry<VxlanDevice>[];
  addresses: Entry<Address>[];
  routes: Entry<Route>[];
  neighs: Entry<Neigh>[];
  fdbs: Entry<Fdb>[];
}

const routeKey = (dst: string) => dst;
const devKey = (dev: string, x: string) => `${dev} ${x}`; // device names hold no spaces
const keyDev = (key: string) => key.slice(0, key.indexOf(" "));

const routeEq = (a: KRoute, b: KRoute) => a.dst === b.dst && a.via === b.via && a.dev === b.dev && a.onlink === b.onlink;
const neighEq = (a: Neigh, b: Neigh) => a.lladdr === b.lladdr && a.ip === b.ip && a.dev === b.dev;
const fdbEq = (a: Fdb, b: Fdb) => a.dst === b.dst && a.mac === b.mac && a.dev === b.dev;
const deviceEq = (a: VxlanDevice, b: VxlanDevice) => JSON.stringify(a) === JSON.stringify(b);
const sameKey = () => true; // addresses: the key is the whole value

/** Actual state of one link as `ip -json -d addr show` reports it. */
interface KLink {
  ifname: string;
  flags?: string[];
  mtu?: number;
  address?: string;
  linkinfo?: { info_kind?: string; info_data?: Record<string, unknown> };
  addr_info?: { family?: string; local?: string; prefixlen?: number; scope?: string }[];
}

const DEFAULT_VXLAN_PORT = 8472;

/** flannel's compatibility test (§5): type, VNI, underlay, local IP, port and GBP must match; MTU/learning/MAC may differ. */
function vxlanCompatible(want: VxlanDevice, have: KLink): boolean {
  const info = have.linkinfo;
  if (info?.info_kind !== "vxlan" || !info.info_data) return false;
  const d = info.info_data;
  if (d.id !== want.vni) return false;
  if (typeof d.local === "string" && d.local !== want.local) return false;
  if (typeof d.link === "string" && d.link !== want.underlay) return false;
  if ((typeof d.port === "number" ? d.port : DEFAULT_VXLAN_PORT) !== (want.port || DEFAULT_VXLAN_PORT)) return false;
  if (d.group !== undefined || d.remote !== undefined) return false;
  return (d.gbp === true) === want.gbp;
}

export class Reconciler {
  private readonly queue: CommandQueue;
  private readonly owned: () => string[];
  private readonly proto: number;
  private readonly netns: string | undefined;
  private readonly fullIntervalMs: number;
  private readonly coalesceMs: number;

  private readonly fragments = new Map<string, NormFragment>();
  private readonly devices = new Table<VxlanDevice>();
  private readonly addresses = new Table<Address>();
  private readonly routes = new Table<KRoute>();
  private readonly neighs = new Table<Neigh>();
  private readonly fdbs = new Table<Fdb>();
  /** FDB remotes found by a full reconcile that nobody desires (a MAC can have several): removed by the next drain. */
  private staleFdbs: Fdb[] = [];
  /** Devices whose addresses a full reconcile checks even if nothing about them is dirty. */
  private addrCheck = new Set<string>();

  private chain: Promise<unknown> = Promise.resolve();
  private drainTimer: ReturnType<typeof setTimeout> | null = null;
  private fullTimer: ReturnType<typeof setInterval> | null = null;
  private fullPending = false;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private retryMs = RETRY_MIN_MS;
  private counts: ReconcileCounts = { added: 0, removed: 0, repaired: 0 };
  /** Totals over every full reconcile since start, for /metrics. */
  readonly totals = { fullRuns: 0, added: 0, removed: 0, repaired: 0 };

  constructor(queue: CommandQueue, opts: ReconcilerOptions) {
    this.queue = queue;
    const od = opts.ownedDevices;
    this.owned = typeof od === "function" ? od : () => od;
    this.proto = opts.routeProto ?? ROUTE_PROTO;
    this.netns = opts.netns;
    // NaN, 0 or a negative period would make setInterval spin: fall back to the default.
    const every = opts.fullIntervalMs ?? 10_000;
    this.fullIntervalMs = Number.isFinite(every) && every > 0 ? every : 10_000;
    this.coalesceMs = opts.coalesceMs ?? 5;
  }

  /** Desires `fragment` under `id`, replacing what that id desired before. Throws (changing nothing) on invalid values. */
  set(id: string, fragment: StateFragment): void {
    const next = normalize(fragment);
    const prev = this.fragments.get(id);
    this.fragments.set(id, next);
    if (prev || next.devices.length) diffInto(this.devices, id, prev?.devices, next.devices, deviceEq);
    if (prev || next.addresses.length) diffInto(this.addresses, id, prev?.addresses, next.addresses, sameKey);
    if (prev || next.routes.length) diffInto(this.routes, id, prev?.routes, next.routes, routeEq);
    if (prev || next.neighs.length) diffInto(this.neighs, id, prev?.neighs, next.neighs, neighEq);
    if (prev || next.fdbs.length) diffInto(this.fdbs, id, prev?.fdbs, next.fdbs, fdbEq);
    this.scheduleDrain();
  }

  /** Stops desiring what `id` desired; entries nobody else desires are removed from the kernel. */
  delete(id: string): void {
    const prev = this.fragments.get(id);
    if (!prev) return;
    this.fragments.delete(id);
    for (const e of prev.devices) this.devices.remove(e.key, id);
    for (const e of prev.addresses) this.addresses.remove(e.key, id);
    for (const e of prev.routes) this.routes.remove(e.key, id);
    for (const e of prev.neighs) this.neighs.remove(e.key, id);
    for (const e of prev.fdbs) this.fdbs.remove(e.key, id);
    this.scheduleDrain();
  }

  /** Resolves when everything set/deleted so far has been applied (or has failed after the queue's retries). */
  flush(): Promise<void> {
    if (this.drainTimer) clearTimeout(this.drainTimer);
    this.drainTimer = null;
    return this.serial(() => this.drain());
  }

  /** Reads the kernel, repairs what differs from the desired state and removes what we own but nobody desires. */
  fullReconcile(): Promise<ReconcileCounts> {
    return this.serial(async () => {
      this.counts = { added: 0, removed: 0, repaired: 0 };
      await this.loadActual();
      await this.drain();
      this.totals.fullRuns++;
      this.totals.added += this.counts.added;
      this.totals.removed += this.counts.removed;
      this.totals.repaired += this.counts.repaired;
      return this.counts;
    });
  }

  /** Starts the periodic full reconcile. */
  start(): void {
    if (this.fullTimer) return;
    this.fullTimer = setInterval(() => {
      if (this.fullPending) return; // never pile up reconciles behind a slow one
      this.fullPending = true;
      this.fullReconcile()
        .then((c) => {
          if (c.added || c.removed || c.repaired) log.info(`full reconcile: ${JSON.stringify(c)}`);
        })
        .catch((e) => log.warn(`full reconcile failed: ${(e as Error).message}`))
        .finally(() => (this.fullPending = false));
    }, this.fullIntervalMs);
  }

  stop(): void {
    if (this.fullTimer) clearInterval(this.fullTimer);
    this.fullTimer = null;
    if (this.drainTimer) clearTimeout(this.drainTimer);
    this.drainTimer = null;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  // ---------------------------------------------------------------------------------------------------------------

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private scheduleDrain(): void {
    if (this.drainTimer) return;
    this.drainTimer = setTimeout(() => {
      this.drainTimer = null;
      this.serial(() => this.drain()).catch((e) => {
        log.warn(`applying kernel state failed: ${(e as Error).message}; retrying`);
        this.retryLater();
      });
    }, this.coalesceMs);
  }

  /** A drain that could not finish is tried again with backoff (what it left undone is still dirty). */
  private retryLater(): void {
    if (this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.scheduleDrain();
    }, this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
  }

  private ownedSet(): Set<string> {
    const s = new Set(this.owned());
    for (const k of this.devices.desired.keys()) s.add(k);
    return s;
  }

  private async drain(): Promise<void> {
    if (this.devices.dirty.size || this.addresses.dirty.size || this.addrCheck.size) {
      // Peer entries need their device: while it cannot be set up, they wait (dirty) instead of failing one by one.
      if (!(await this.applyDevices())) {
        this.retryLater();
        return;
      }
    }
    this.retryMs = RETRY_MIN_MS;

    // Peer entries: one runAll in dependency order. Parallel arrays (no closure per op) keep 30,000 ops cheap.
    const rDel: string[] = [];
    const rAdd: string[] = [];
    const nDel: string[] = [];
    const nAdd: string[] = [];
    const fDel: string[] = [];
    const fAdd: string[] = [];
    split(this.routes, routeEq, rAdd, rDel);
    split(this.neighs, neighEq, nAdd, nDel);
    split(this.fdbs, fdbEq, fAdd, fDel);
    const stale = this.staleFdbs;
    this.staleFdbs = [];
    const R = this.routes;
    const N = this.neighs;
    const F = this.fdbs;

    const cmds: Command[] = [];
    const tables: (Table<KRoute> | Table<Neigh> | Table<Fdb> | null)[] = [];
    const keys: string[] = [];
    const values: (KRoute | Neigh | Fdb | undefined)[] = []; // undefined: a delete
    const op = (c: Command, t: (typeof tables)[number], k: string, v: (typeof values)[number]) => {
      cmds.push(c);
      tables.push(t);
      keys.push(k);
      values.push(v);
    };
    for (const k of rDel) op(routeDel(R.applied.get(k)!, this.proto), R, k, undefined);
    for (const f of stale) op(fdbDel(f), null, "", undefined);
    for (const k of fDel) op(fdbDel(F.applied.get(k)!), F, k, undefined);
    for (const k of nDel) op(neighDel(N.applied.get(k)!), N, k, undefined);
    for (const k of nAdd) {
      const v = N.effective(k)!;
      op(neighReplace(v), N, k, v);
    }
    for (const k of fAdd) {
      const v = F.effective(k)!;
      op(fdbReplace(v), F, k, v);
    }
    for (const k of rAdd) {
      const v = R.effective(k)! as Route;
      op(routeReplace(v, this.proto), R, k, v);
    }
    if (cmds.length === 0) return;
    const results = await this.queue.runAll(cmds);
    // A failed entry stays as it was in `applied`; the next full reconcile sees the kernel and tries again.
    for (let i = 0; i < results.length; i++) {
      const t = tables[i];
      if (!t || !results[i]!.ok) continue;
      const v = values[i];
      if (v === undefined) t.applied.delete(keys[i]!);
      else (t as Table<typeof v>).applied.set(keys[i]!, v);
    }
  }

  /** Devices and addresses: rare, so they may read the kernel first. False if a command failed (all retried later). */
  private async applyDevices(): Promise<boolean> {
    const dirtyDevs = [...this.devices.dirty];
    const checkAddrDevs = new Set<string>(this.addrCheck);
    for (const k of this.addresses.dirty) checkAddrDevs.add(keyDev(k));
    for (const d of dirtyDevs) checkAddrDevs.add(d);
    const previouslyDesiredAddrs = new Set(this.addresses.dirty);
    this.devices.dirty.clear();
    this.addresses.dirty.clear();
    this.addrCheck.clear();

    let links: KLink[];
    try {
      links = (await ipJson(["-d", "addr", "show"], this.netns)) as KLink[];
    } catch (e) {
      this.redoDevices(dirtyDevs, checkAddrDevs, previouslyDesiredAddrs); // try again on the next drain
      throw e;
    }
    const byName = new Map(links.map((l) => [l.ifname, l]));
    const owned = this.ownedSet();

    const cmds: Command[] = [];
    const upCmds: Command[] = [];
    const fresh = new Set<string>(); // devices (re)created now: they hold nothing yet
    for (const name of dirtyDevs) {
      const want = this.devices.effective(name);
      const have = byName.get(name);
      if (!want) {
        // Nobody desires it any more: remove it if it is (still) a vxlan device.
        if (have?.linkinfo?.info_kind === "vxlan") {
          cmds.push(linkDel(name));
          this.counts.removed++;
        }
        this.devices.applied.delete(name);
        this.forgetEntriesOn(name, false);
        continue;
      }
      if (!have || !vxlanCompatible(want, have)) {
        if (have) {
          log.info(`device ${name} is incompatible with the wanted vxlan ${want.vni}: recreating it`);
          cmds.push(linkDel(name));
        }
        cmds.push(linkAddVxlan(want));
        upCmds.push(linkSetUp(name));
        fresh.add(name);
        if (this.devices.applied.has(name) || have) this.counts.repaired++;
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
    for (const dev of checkAddrDevs) {
      const link = byName.get(dev);
      if (!link && !this.devices.effective(dev)) continue; // nothing to do on a device that is not there
      const actual = new Set<string>();
      if (link && !fresh.has(dev)) {
        for (const a of link.addr_info ?? []) {
          if (a.scope !== "global" || typeof a.local !== "string" || typeof a.prefixlen !== "number") continue;
          try {
            actual.add(validAddress({ dev, cidr: `${a.local}/${a.prefixlen}` }).cidr);
          } catch {
            /* not something we could have made */
          }
        }
      }
      const wanted = new Set<string>();
      for (const [k] of this.addresses.desired) if (keyDev(k) === dev) wanted.add(this.addresses.effective(k)!.cidr);
      for (const cidr of actual) {
        if (wanted.has(cidr)) continue;
        if (owned.has(dev) || previouslyDesiredAddrs.has(devKey(dev, cidr))) {
          cmds.push(addrDel({ dev, cidr }));
          this.counts.removed++;
        }
      }
      for (const cidr of wanted) {
        if (actual.has(cidr)) continue;
        cmds.push(addrReplace({ dev, cidr }));
        if (!fresh.has(dev) && this.addresses.applied.has(devKey(dev, cidr))) this.counts.repaired++;
        else if (!fresh.has(dev)) this.counts.added++;
      }
      for (const cidr of wanted) this.addresses.applied.set(devKey(dev, cidr), { dev, cidr });
    }

    cmds.push(...upCmds);
    let ok = true;
    if (cmds.length) {
      for (const r of await this.queue.runAll(cmds)) {
        if (r.ok) continue;
        ok = false;
        log.warn(`device setup: ip ${r.cmd.line}: ${r.error}`);
      }
    }
    // A (re)created device holds nothing: what we had applied on it must be added again.
    for (const name of fresh) this.forgetEntriesOn(name, true);
    if (!ok) {
      this.redoDevices(dirtyDevs, checkAddrDevs, previouslyDesiredAddrs);
      return false;
    }
    for (const name of dirtyDevs) if (this.devices.effective(name)) this.devices.applied.set(name, this.devices.effective(name)!);
    return true;
  }

  /** Puts back what one device step took on, so the next drain does it again. */
  private redoDevices(devs: string[], addrDevs: Set<string>, addrKeys: Set<string>): void {
    for (const d of devs) this.devices.dirty.add(d);
    for (const d of addrDevs) this.addrCheck.add(d);
    for (const k of addrKeys) this.addresses.dirty.add(k);
  }

  /** A device was deleted or (re)created: whatever we applied on it is gone; desired entries must be re-added. */
  private forgetEntriesOn(dev: string, readd: boolean): void {
    const forget = <T extends { dev?: string }>(t: Table<T>) => {
      for (const [k, v] of t.applied) {
        if (v.dev !== dev) continue;
        t.applied.delete(k);
        if (readd && t.desired.has(k)) t.dirty.add(k);
      }
    };
    forget(this.routes);
    forget(this.neighs);
    forget(this.fdbs);
  }

  /** Replaces the applied view with what the kernel has, counts differences and marks everything dirty. */
  private async loadActual(): Promise<void> {
    const owned = this.ownedSet();
    const p = String(this.proto);
    const [links, r4, r6] = await Promise.all([
      ipJson(["link", "show"], this.netns) as Promise<KLink[]>,
      ipJson(["-4", "route", "show", "table", "main", "proto", p], this.netns) as Promise<Record<string, unknown>[]>,
      ipJson(["-6", "route", "show", "table", "main", "proto", p], this.netns) as Promise<Record<string, unknown>[]>,
    ]);
    const present = new Set(links.map((l) => l.ifname));

    // Devices and addresses: re-checked by the device step.
    for (const k of this.devices.desired.keys()) this.devices.dirty.add(k);
    for (const d of owned) if (present.has(d)) this.addrCheck.add(d);
    for (const k of this.addresses.desired.keys()) this.addrCheck.add(keyDev(k));

    // Routes: all with our proto are ours.
    const actualRoutes = new Map<string, KRoute>();
    for (const [list, family] of [
      [r4, 4],
      [r6, 6],
    ] as const) {
      for (const r of list) {
        const kr = parseRoute(r, family);
        if (kr) actualRoutes.set(routeKey(kr.dst), kr);
      }
    }
    this.adopt(this.routes, actualRoutes, routeEq);

    // Neighbours and FDB: read on owned devices, and on other devices only for keys we desire.
    const neighDevs = new Set(owned);
    for (const k of this.neighs.desired.keys()) neighDevs.add(keyDev(k));
    const fdbDevs = new Set(owned);
    for (const k of this.fdbs.desired.keys()) fdbDevs.add(keyDev(k));
    const [neighLists, fdbLists] = await Promise.all([
      Promise.all(
        [...neighDevs]
          .filter((d) => present.has(d))
          .map(async (dev) => ({ dev, list: (await ipJson(["neigh", "show", "dev", dev], this.netns)) as Record<string, unknown>[] })),
      ),
      Promise.all(
        [...fdbDevs]
          .filter((d) => present.has(d))
          .map(async (dev) => ({ dev, list: (await bridgeJson(["fdb", "show", "dev", dev], this.netns)) as Record<string, unknown>[] })),
      ),
    ]);

    const actualNeighs = new Map<string, Neigh>();
    for (const { dev, list } of neighLists) {
      for (const n of list) {
        const state = n.state;
        if (!Array.isArray(state) || !state.includes("PERMANENT")) continue; // learned entries are not ours
        try {
          const v = validNeigh({ dev, ip: n.dst, lladdr: n.lladdr });
          const k = devKey(dev, v.ip);
          if (owned.has(dev) || this.neighs.desired.has(k)) actualNeighs.set(k, v);
        } catch {
          /* not something we could have made */
        }
      }
    }
    this.adopt(this.neighs, actualNeighs, neighEq);

    // A MAC may have several remotes; the one we desire is adopted, all others are stale.
    const actualFdbs = new Map<string, Fdb>();
    for (const { dev, list } of fdbLists) {
      for (const f of list) {
        // Entries without a remote, and entries the kernel learned (vxlan Learning on), are not ours.
        if (typeof f.dst !== "string" || f.state !== "permanent") continue;
        let v: Fdb;
        try {
          v = validFdb({ dev, mac: f.mac, dst: f.dst });
        } catch {
          continue;
        }
        const k = devKey(dev, v.mac);
        const want = this.fdbs.effective(k);
        if (want && want.dst === v.dst) actualFdbs.set(k, v);
        else if (want || owned.has(dev)) {
          this.staleFdbs.push(v);
          this.counts.removed++;
        }
      }
    }
    for (const k of this.fdbs.desired.keys()) {
      if (actualFdbs.has(k)) continue;
      if (this.fdbs.applied.has(k)) this.counts.repaired++;
      else this.counts.added++;
    }
    this.fdbs.applied.clear();
    for (const [k, v] of actualFdbs) this.fdbs.applied.set(k, v);
    for (const k of this.fdbs.desired.keys()) this.fdbs.dirty.add(k);
  }

  /** Counts differences between kernel and desire, then makes the kernel view the applied one and dirties all keys. */
  private adopt<T>(t: Table<T>, actual: Map<string, T>, eq: (a: T, b: T) => boolean): void {
    for (const [k, o] of t.desired) {
      const a = actual.get(k);
      const want = o[o.length - 1]!.value;
      if (a !== undefined && eq(a, want)) continue;
      if (a === undefined && !t.applied.has(k)) this.counts.added++;
      else this.counts.repaired++;
    }
    for (const k of actual.keys()) if (!t.desired.has(k)) this.counts.removed++;
    t.applied.clear();
    for (const [k, v] of actual) {
      t.applied.set(k, v);
      t.dirty.add(k);
    }
    for (const k of t.desired.keys()) t.dirty.add(k);
  }
}

/** Dirty keys -> keys to (re)add and keys to delete; clears the dirty set. */
function split<T>(t: Table<T>, eq: (a: T, b: T) => boolean, add: string[], del: string[]): void {
  for (const k of t.dirty) {
    const want = t.effective(k);
    const have = t.applied.get(k);
    if (want !== undefined) {
      if (have === undefined || !eq(want, have)) add.push(k);
    } else if (have !== undefined) del.push(k);
  }
  t.dirty.clear();
}

function diffInto<T>(t: Table<T>, id: string, prev: Entry<T>[] | undefined, next: Entry<T>[], eq: (a: T, b: T) => boolean): void {
  if (!prev || prev.length === 0) {
    for (const e of next) t.upsert(e.key, id, e.value);
    return;
  }
  const before = new Map(prev.map((e) => [e.key, e.value]));
  for (const e of next) {
    const old = before.get(e.key);
    before.delete(e.key);
    if (old === undefined || !eq(old, e.value)) t.upsert(e.key, id, e.value);
  }
  for (const k of before.keys()) t.remove(k, id);
}

const NONE: never[] = [];
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 10_000;

/** Validates a fragment into canonical keyed entries (plain loops: this runs once per peer on the 10k path). */
function normalize(f: StateFragment): NormFragment {
  if (typeof f !== "object" || f === null) throw new TypeError("state fragment must be an object");
  return {
    devices: keyed(f.devices, "devices", validVxlanDevice, (v) => v.name),
    addresses: keyed(f.addresses, "addresses", validAddress, (v) => devKey(v.dev, v.cidr)),
    routes: keyed(f.routes, "routes", validRoute, (v) => routeKey(v.dst)),
    neighs: keyed(f.neighs, "neighs", validNeigh, (v) => devKey(v.dev, v.ip)),
    fdbs: keyed(f.fdbs, "fdbs", validFdb, (v) => devKey(v.dev, v.mac)),
  };
}

/** Each entry of one list of a fragment, validated and paired with its table key. */
function keyed<T>(list: T[] | undefined, what: string, valid: (x: unknown) => T, keyOf: (v: T) => string): Entry<T>[] {
  if (list === undefined || (Array.isArray(list) && list.length === 0)) return NONE;
  if (!Array.isArray(list)) throw new TypeError(`state fragment ${what} must be an array`);
  const out: Entry<T>[] = [];
  for (const x of list) {
    const v = valid(x);
    out.push({ key: keyOf(v), value: v });
  }
  return out;
}

/** One entry of `ip -json -4|-6 route show`: "default" and bare host addresses become CIDRs of that family. */
function parseRoute(r: Record<string, unknown>, family: 4 | 6): KRoute | null {
  if (typeof r.dst !== "string") return null;
  try {
    let dst = r.dst;
    const v6 = family === 6;
    if (dst === "default") dst = v6 ? "::/0" : "0.0.0.0/0";
    else if (!dst.includes("/")) dst += v6 ? "/128" : "/32";
    const kr: KRoute = { dst: validNet(dst, "route dst"), onlink: Array.isArray(r.flags) && r.flags.includes("onlink") };
    if (typeof r.gateway === "string") kr.via = validIP(r.gateway, "route gateway");
    if (typeof r.dev === "string") kr.dev = validDevName(r.dev, "route dev");
    return kr;
  } catch {
    return null;
  }
}
