// Peer watch: a snapshot of every lease, then events, as Added/Removed for every peer but ourselves.
// A record that cannot be parsed is skipped with a warning; it never reads as "no peers" (flanneld's quirk,
// docs/flannel-compat.md §2).
//
// Written once above the store interface, for every store:
// - Stale-watch detection (WatchSupervisor): every few seconds a linearizable currentRevision() read; a watch that
//   stays behind it (alive but stuck on a hung etcd member, a NATS consumer on a dead server) is restarted from
//   where it was, which lands it on another endpoint/server.
// - A store outage never removes a peer: removals happen only on the store's word while it is reachable and the
//   watch is caught up (StoreHealth.removalsAllowed); otherwise the peer is kept and the removal waits for the
//   re-list that follows the outage (one right away for new peers, one after the hold for the ones that left).

import type { NetworkConfig } from "./config.ts";
import { type Lease, subnetKey } from "./lease.ts";
import { UsablePeers, usablePeerEvents } from "./lease-validity.ts";
import { type LeaseSnapshot, leaseEquals, listLeases, parseLeaseRecord } from "./lease-protocol.ts";
import { sleep } from "./sleep.ts";
import { type Revision, type Store, SUBNETS_PREFIX, type WatchEvent } from "./store.ts";
import { type StoreHealth, storeHealth, type WatchRestartReason } from "./store-health.ts";
import { logger } from "./log.ts";

const log = logger("peers");

export type PeerEvent =
  | { type: "added"; key: string; lease: Lease }
  | { type: "removed"; key: string; lease: Lease }
  /** The initial snapshot (or a re-list) is complete: the known set now matches the store. */
  | { type: "synced"; peers: number }
  /** Our own record changed or vanished (expired, deleted by hand): the agent decides what to do. */
  | { type: "own"; lease: Lease | null };

export interface PeerWatchOptions {
  /** Default: the process's storeHealth. */
  health?: StoreHealth;
  /** How often the watch is checked against the store while anything is unsettled (default 2000 ms). */
  checkIntervalMs?: number;
  /**
   * How often while all is quiet: the store reachable, the watch caught up, no removal waiting (default 5000 ms, or
   * checkIntervalMs when only that is given). A stuck watch is then noticed within this and replaced staleAfterMs
   * later (≤ ~11 s by default); an idle agent makes 12 checks a minute instead of 30.
   */
  quietCheckIntervalMs?: number;
  /** A watch behind the store for this long is restarted (default 6000 ms). */
  staleAfterMs?: number;
  /** A list already made (the lease acquisition's): the first sync uses it instead of listing again. */
  initial?: SnapshotBox;
  /**
   * The records passed on so far, kept by the consumer (UsablePeers, which holds every record anyway): read here,
   * never written, instead of a second map of every lease (10k peers: ~0.7 MB). The consumer must apply each
   * Added/Removed before asking for the next event.
   */
  known?: ReadonlyMap<string, Lease>;
}

/** Holds a snapshot until the first sync takes it out, so nothing keeps 10k decoded leases alive after that. */
export interface SnapshotBox {
  snapshot?: LeaseSnapshot;
}

/** With `usable`, only records that pass the lease validity rules (src/lease-validity.ts) become peers. */
export async function* watchPeers(
  store: Store,
  ownKey: () => string,
  signal: AbortSignal,
  usable?: { config: NetworkConfig; own: () => Lease | null },
  opts: PeerWatchOptions = {},
): AsyncGenerator<PeerEvent> {
  if (usable) {
    const sel = new UsablePeers(usable.config, usable.own);
    const raw = watchPeers(store, ownKey, signal, undefined, { ...opts, known: sel.records });
    return yield* usablePeerEvents(raw, sel);
  }
  const health = opts.health ?? storeHealth;
  // Our own map only when nobody keeps the records for us.
  const mine = opts.known ? null : new Map<string, Lease>();
  const known: ReadonlyMap<string, Lease> = opts.known ?? mine!;
  /** Peers whose removal waits until removals are allowed (a re-list then decides). */
  const parked = new Set<string>();

  // Diffs a full list against what we know: Added for new or changed peers, Removed for vanished ones. `beforeSynced`
  // gets the list's revision before "synced" is yielded.
  async function* resync(beforeSynced?: (revision: number) => void): AsyncGenerator<PeerEvent, number> {
    let snap = opts.initial?.snapshot;
    if (snap)
      delete opts.initial?.snapshot; // used once: later re-lists ask the store
    else snap = await listUntilAnswered(store, signal);
    const seen = new Set<string>();
    const corruptKeys = new Set(snap.corrupt.map((n) => n.ip)); // keep peers whose record turned corrupt
    for (const lease of snap.leases) {
      const key = keyOf(lease);
      if (key === ownKey()) continue;
      seen.add(key);
      parked.delete(key);
      const old = known.get(key);
      if (!old || !leaseEquals(old, lease)) {
        mine?.set(key, lease);
        yield { type: "added", key, lease };
      }
    }
    const mayRemove = health.removalsAllowed();
    for (const [key, lease] of known) {
      if (seen.has(key) || corruptKeys.has(lease.subnet.ip)) continue;
      if (!mayRemove) {
        parked.add(key);
        continue;
      }
      parked.delete(key);
      mine?.delete(key);
      yield { type: "removed", key, lease };
    }
    // The engine may keep this finished generator's frame (the caller's yield* slot) until the next re-list: emptied
    // now, `seen` holds no 10,000 keys meanwhile.
    seen.clear();
    const revision = snap.revision;
    snap = undefined;
    beforeSynced?.(revision);
    yield { type: "synced", peers: known.size };
    return revision;
  }

  const sup = new WatchSupervisor(store, SUBNETS_PREFIX, health, opts, () => parked.size > 0);
  // Ends the supervisor (and its store watch) when this generator ends, even with a next() of it still outstanding.
  const done = new AbortController();
  let events: AsyncGenerator<WatchEvent> | undefined;
  let pending: Promise<IteratorResult<WatchEvent>> | undefined;
  try {
    // The store watch starts before the first "synced" is yielded, so it is set up while the consumer programs the
    // first sync (10k peers: ~0.4 s) and not after ready: a peer written right then was held back by the watch's own
    // start (etcd: 50-110 ms).
    yield* resync((revision) => {
      events = sup.run(revision, AbortSignal.any([signal, done.signal]));
      pending = events.next();
    });
    for (;;) {
      const r = await (pending ?? events!.next());
      pending = undefined;
      if (r.done) return;
      yield* peerEventsOf(r.value);
    }
  } finally {
    done.abort();
    if (pending)
      pending.catch(() => {}); // settles now that the supervisor is aborted; its own finally cleans up
    else await events?.return(undefined);
  }

  /** What one watch event means for the peers (a re-list on "relist"). */
  async function* peerEventsOf(ev: WatchEvent): AsyncGenerator<PeerEvent> {
    if (ev.type === "relist") {
      sup.caughtUpTo(yield* resync());
      return;
    }
    if (ev.type === "progress") return;
    if (ev.type === "delete") {
      if (ev.key === ownKey()) {
        yield { type: "own", lease: null };
        return;
      }
      const old = known.get(ev.key);
      if (!old) return;
      if (!health.removalsAllowed()) {
        log.info(`${ev.key} is gone from the store, but the store was unreachable or behind just now: kept until a re-list confirms it`);
        parked.add(ev.key);
        return;
      }
      mine?.delete(ev.key);
      yield { type: "removed", key: ev.key, lease: old };
      return;
    }
    const lease = parseLeaseRecord(ev.kv);
    if (ev.kv.key === ownKey()) {
      if (lease) yield { type: "own", lease }; // a corrupt own record is repaired by the next renewal
      return;
    }
    if (!lease) return; // logged by parseLeaseRecord; the peer keeps its last good state
    parked.delete(ev.kv.key);
    const old = known.get(ev.kv.key);
    if (old && leaseEquals(old, lease)) return;
    mine?.set(ev.kv.key, lease);
    yield { type: "added", key: ev.kv.key, lease };
  }
}

/** listLeases until it answers: a store that cannot be listed just now keeps every peer (and the agent) as it is. */
async function listUntilAnswered(store: Store, signal: AbortSignal): Promise<Awaited<ReturnType<typeof listLeases>>> {
  for (let delay = 500, logged = false; ; delay = Math.min(delay * 2, 5000)) {
    try {
      return await listLeases(store, { expiry: false }); // peers' expiry times are never used
    } catch (e) {
      if (signal.aborted) throw e;
      if (!logged) log.warn(`listing leases failed (${(e as Error).message}); peers are kept, retrying`);
      logged = true;
      await sleep(delay, signal);
      if (signal.aborted) throw e;
    }
  }
}

const keyOf = (l: Lease): string => subnetKey(l.subnet, l.ipv6Subnet);

type Item = { gen: number; ev: WatchEvent } | { gen: number; restart: WatchRestartReason } | { relist: true };

/**
 * Runs store.watch and keeps it honest: checks it against store.currentRevision() every checkIntervalMs (every
 * quietCheckIntervalMs while all is quiet) and
 * restarts it from its position when it stayed behind for staleAfterMs, when it failed, or if it ever ended.
 * Yields the store's events plus { type: "relist" } after an outage (right away, and again after the removal hold).
 */
export class WatchSupervisor {
  private position: Revision = 0;
  private readonly checkMs: number;
  private readonly quietMs: number;
  private readonly staleMs: number;
  /** The revision the last behind-check wanted, and since when (epoch ms). */
  private target = 0;

  constructor(
    private readonly store: Store,
    private readonly prefix: string,
    private readonly health: StoreHealth,
    opts: PeerWatchOptions,
    private readonly wantsRelist: () => boolean,
  ) {
    this.checkMs = opts.checkIntervalMs ?? 2000;
    this.quietMs = opts.quietCheckIntervalMs ?? opts.checkIntervalMs ?? 5000;
    this.staleMs = opts.staleAfterMs ?? 6000;
  }

  /** The consumer re-listed at `revision`: everything up to it is known. */
  caughtUpTo(revision: Revision): void {
    if (revision > this.position) this.position = revision;
  }

  async *run(afterRevision: Revision, signal: AbortSignal): AsyncGenerator<WatchEvent> {
    this.position = afterRevision;
    const queue: Item[] = [];
    let wake: (() => void) | null = null;
    const push = (item: Item) => {
      queue.push(item);
      const w = wake;
      wake = null;
      w?.();
    };
    const onAbort = () => wake?.();
    signal.addEventListener("abort", onAbort, { once: true });

    let gen = 0;
    const inner = { ctl: null as AbortController | null };
    const start = () => {
      inner.ctl?.abort();
      const ctl = new AbortController();
      inner.ctl = ctl;
      const g = ++gen;
      const sig = AbortSignal.any([signal, ctl.signal]);
      const from = this.position;
      void (async () => {
        try {
          for await (const ev of this.store.watch(this.prefix, from, sig, { expiry: false })) {
            if (sig.aborted) return;
            push({ gen: g, ev });
          }
          if (!sig.aborted) push({ gen: g, restart: "ended" });
        } catch (e) {
          if (sig.aborted) return;
          this.health.error();
          log.warn(`the ${this.store.kind} watch failed (${(e as Error).message}); restarting it`);
          push({ gen: g, restart: "error" });
        }
      })();
    };

    const holdTimers = new Set<ReturnType<typeof setTimeout>>();
    const checks = (async () => {
      let errorsSeen = this.health.errors;
      while (!signal.aborted) {
        // New store errors since the last choice mean: not quiet.
        const errors = this.health.errors;
        await sleep(this.quiet() && errors === errorsSeen ? this.quietMs : this.checkMs, signal);
        errorsSeen = errors;
        if (signal.aborted) return;
        const restart = await this.check(push, holdTimers);
        if (restart) push({ gen, restart: "stale" });
      }
    })();

    start();
    try {
      while (!signal.aborted) {
        const item = queue.shift();
        if (!item) {
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
          continue;
        }
        if ("relist" in item) {
          yield { type: "relist" };
          continue;
        }
        if (item.gen !== gen) continue; // from a watch that was replaced
        if ("restart" in item) {
          this.health.watchRestarted(item.restart);
          if (item.restart !== "stale") await sleep(500, signal); // a failing watch is not restarted in a tight loop
          if (!signal.aborted) start();
          continue;
        }
        const ev = item.ev;
        const rev = ev.type === "put" ? ev.kv.revision : ev.type === "delete" || ev.type === "progress" ? ev.revision : 0;
        if (rev > this.position) this.position = rev;
        if (this.position >= this.target) this.health.behindSince = null;
        yield ev;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      inner.ctl?.abort();
      for (const t of holdTimers) clearTimeout(t);
      await checks.catch(() => {});
    }
  }

  /** Nothing to settle: the store answered, the watch was caught up at the last check, and no removal is parked. */
  private quiet(): boolean {
    return this.health.up && this.health.behindSince === null && !this.wantsRelist();
  }

  /** One check against the store. True when the watch is stale and must be restarted. */
  private async check(push: (i: Item) => void, holdTimers: Set<ReturnType<typeof setTimeout>>): Promise<boolean> {
    const startedAt = Date.now();
    let r: Revision;
    try {
      r = await this.store.currentRevision(this.prefix);
    } catch (e) {
      this.health.error();
      this.health.unreachable(`${this.store.kind} ${this.store.location}: ${(e as Error).message}`);
      return false;
    }
    if (!this.health.up) {
      this.health.reachable();
      push({ relist: true }); // new peers now; removals wait for the hold
      const t = setTimeout(() => {
        holdTimers.delete(t);
        push({ relist: true });
      }, this.health.removalHoldMs + 100);
      holdTimers.add(t);
    }
    if (r <= this.position) {
      this.health.behindSince = null;
      this.target = 0;
      if (this.wantsRelist() && this.health.removalsAllowed()) push({ relist: true });
      return false;
    }
    const behind = this.health.behindSince;
    if (behind === null || this.position >= this.target) {
      // Newly behind, or it reached the last target and has more to deliver: give it staleAfterMs from here.
      this.health.behindSince = startedAt;
      this.target = r;
      return false;
    }
    if (startedAt - behind < this.staleMs) return false;
    log.warn(
      `the ${this.store.kind} watch is ${Math.round((startedAt - behind) / 1000)} s behind the store (at ${this.position}, store at ${r}); restarting it`,
    );
    this.health.behindSince = startedAt;
    this.target = r;
    return true;
  }
}
