// The NATS watch: an ordered push consumer on the prefix's subject filter, starting at afterRevision + 1.
// PUT -> put, DEL/PURGE -> delete. 2.9 sends nothing when a record expires, so the watcher tracks the expiry of every
// key (seeded from a snapshot of the prefix when it starts) and emits "delete" itself when one passes, then has the
// reaper CAS-delete it; the server's DEL marker that follows is not reported twice. On reconnect (or if the consumer
// ends) the watch re-creates the consumer from the last revision seen + 1. If that revision is no longer in the
// stream (purged, or the bucket was re-created), it yields { type: "relist" } and continues from the stream's end.

import { logger } from "../../src/log.ts";
import type { JsMsg } from "@nats-io/jetstream";
import { sleep } from "../../src/sleep.ts";
import type { Revision, WatchEvent } from "../../src/store.ts";
import { storeHealth } from "../../src/store-health.ts";
import { envelopeCreated, envelopeExpired } from "../record-envelope.ts";
import type { NatsBucket } from "./connection.ts";
import { natsPrefixFilter } from "./keys.ts";
import { type RawEntry, toRawEntry } from "./entries.ts";
import { type Reaper, snapshot } from "./records.ts";

const log = logger("nats");

const WATCH_RETRY_MIN_MS = 100;
const WATCH_RETRY_MAX_MS = 5_000;
/** Longest single timer; setTimeout overflows past 2^31 ms, and re-arming now and then is harmless. */
const MAX_TIMER_MS = 60 * 60 * 1000;
/** While the server does not answer, recorded expiries are looked at again this often. */
const EXPIRY_RECHECK_MS = 2000;

type Item = { kind: "msg"; msg: JsMsg } | { kind: "restart" } | { kind: "timer" } | { kind: "error"; err: unknown };

/** A small wake-up queue: producers push, the generator awaits (until the signal aborts). */
class Inbox {
  private items: Item[] = [];
  private wake: (() => void) | null = null;
  constructor(private readonly signal: AbortSignal) {
    // One listener for the watch's lifetime (not one per wait, which would pile up on a long watch).
    signal.addEventListener("abort", () => this.wakeUp(), { once: true });
  }
  private wakeUp(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }
  push(item: Item): void {
    this.items.push(item);
    this.wakeUp();
  }
  async next(): Promise<Item | null> {
    while (this.items.length === 0) {
      if (this.signal.aborted) return null;
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    return this.items.shift() ?? null;
  }
  clear(): void {
    this.items = [];
  }
}

export class NatsWatch {
  /** Last stream revision processed (for resuming). */
  private lastRev: number;
  /** Live (not yet expired) keys this watcher knows, with the revision and expiry of their last known put. */
  private readonly live = new Map<string, { revision: number; expiresAt: number | null }>();
  /** Keys we reported deleted by expiry: the revision of the expired put (its DEL marker is not reported again). */
  private readonly expired = new Map<string, number>();
  private readonly inbox: Inbox;
  private timer: ReturnType<typeof setTimeout> | null = null;
  /** When the timer fires (epoch ms): a new record re-arms it only if it expires sooner. */
  private timerAt = Infinity;
  private generation = 0;
  private stopConsumer: (() => void) | null = null;

  constructor(
    private readonly b: NatsBucket,
    private readonly reaper: Reaper,
    private readonly prefix: string,
    afterRevision: Revision,
    private readonly signal: AbortSignal,
    /** The entries of a list at afterRevision (NatsStore.watch): the first start's snapshot, already taken. */
    private seed: RawEntry[] | null = null,
  ) {
    this.inbox = new Inbox(signal);
    this.lastRev = Math.max(0, Math.floor(afterRevision));
  }

  async *run(): AsyncGenerator<WatchEvent> {
    const filter = natsPrefixFilter(this.prefix);
    const statusLoop = this.watchConnection();
    let backoff = WATCH_RETRY_MIN_MS;
    let needStart = true;
    let firstStart = true;
    try {
      while (!this.signal.aborted) {
        if (needStart) {
          try {
            // With server TTLs, a consumer re-created after a break may have missed a delete marker (they live
            // seconds): the consumer re-lists.
            const relist = (await this.start(filter, firstStart)) || (this.b.serverTtl && !firstStart);
            firstStart = false;
            needStart = false;
            backoff = WATCH_RETRY_MIN_MS;
            if (relist) yield { type: "relist" };
            for (const ev of this.expireDue()) yield ev;
          } catch (err) {
            if (this.signal.aborted) break;
            log.debug(`watch ${this.prefix}: (re)start failed, retrying in ${backoff} ms: ${(err as Error).message}`);
            await sleep(backoff, this.signal);
            backoff = Math.min(backoff * 2, WATCH_RETRY_MAX_MS);
            continue;
          }
        }
        const item = await this.inbox.next();
        if (item === null) break;
        if (item.kind === "restart" || item.kind === "error") {
          if (item.kind === "error") {
            storeHealth.error();
            log.debug(`watch ${this.prefix}: consumer ended: ${(item.err as Error)?.message ?? item.err}`);
          }
          needStart = true;
          continue;
        }
        if (item.kind === "msg") {
          let said = false;
          for (const ev of this.onMessage(item.msg)) {
            said = true;
            yield ev;
          }
          // Skipped (another prefix's key, unreadable, a marker already reported): the watch is past it all the same.
          if (!said) yield { type: "progress", revision: item.msg.seq };
        } else if (await this.serverAnswers()) {
          for (const ev of this.expireDue()) yield ev; // the expiry timer fired: the one full scan
        } else {
          // Expiry is judged against a server that answers now: while it does not, nothing expires here.
          this.armAt(Date.now() + EXPIRY_RECHECK_MS);
        }
      }
    } finally {
      this.stopConsumer?.();
      if (this.timer) clearTimeout(this.timer);
      statusLoop.stop();
    }
  }

  /** One round trip to the stream's server, bounded: true when it answered. */
  private async serverAnswers(): Promise<boolean> {
    try {
      await this.b.jsm.streams.info(this.b.stream);
      return true;
    } catch (err) {
      log.debug(`watch ${this.prefix}: NATS did not answer (${(err as Error).message}); expiries wait`);
      return false;
    }
  }

  /** Restarts the consumer when the client reconnects: the server may have lost our ephemeral consumer. */
  private watchConnection(): { stop(): void } {
    let stopped = false;
    const it = this.b.nc.status()[Symbol.asyncIterator]();
    void (async () => {
      try {
        while (!stopped) {
          const r = await it.next();
          if (r.done || stopped) break;
          if (r.value.type === "reconnect") this.inbox.push({ kind: "restart" });
        }
      } catch {
        /* connection closed */
      }
    })();
    return {
      stop: () => {
        stopped = true;
        void it.return?.();
      },
    };
  }

  /**
   * (Re)creates the consumer at lastRev + 1. Returns true when history was lost (a relist is due); then the
   * watch continues from the stream's current end. On the first start and after a loss, the expiry tracking is
   * seeded from a snapshot of the prefix, so keys written before the watch started still expire here. With server
   * TTLs (2.11+) nothing expires here: the first start takes no snapshot (at 10k leases it was a second list right
   * after the agent's own, ~200 ms of CPU and a map of every key) and no key is tracked.
   */
  private async start(filter: string, first: boolean): Promise<boolean> {
    this.stopConsumer?.();
    this.stopConsumer = null;
    this.inbox.clear();
    const gen = ++this.generation;
    const state = (await this.b.jsm.streams.info(this.b.stream)).state;
    const from = this.lastRev + 1;
    // A gap: [from, first_seq) was removed (purge, limits), or the stream is younger than our revision (re-created).
    // (An emptied stream reports first_seq = last_seq + 1; a never-used one 0.) From revision 0 (an empty list's,
    // records.ts) nothing was known, so nothing is lost: the watch starts at the oldest message kept.
    const lost = this.lastRev > state.last_seq || (this.lastRev > 0 && from < state.first_seq);
    if (lost) {
      log.warn(
        `watch ${this.prefix} on NATS ${this.b.location}: revision ${from} is no longer in ${this.b.stream} (first ${state.first_seq}, last ${state.last_seq}); relisting`,
      );
      this.lastRev = state.last_seq;
    }
    if (lost || (first && !this.b.serverTtl)) {
      const seed = this.seed;
      this.seed = null;
      const snap = seed && first && !lost ? { entries: seed, revision: this.lastRev } : await snapshot(this.b, filter);
      this.live.clear();
      this.expired.clear();
      for (const e of snap.entries) {
        if (e.op === "PUT" && e.rec !== null && e.key.startsWith(this.prefix) && !this.b.serverTtl)
          this.live.set(e.key, { revision: e.revision, expiresAt: e.rec.e });
      }
      if (lost) this.lastRev = Math.max(this.lastRev, snap.revision);
    }
    const oc = await this.b.js.consumers.getPushConsumer(this.b.stream, {
      filter_subjects: this.b.subjectPrefix + filter,
      opt_start_seq: this.lastRev + 1,
    });
    const iter = await oc.consume({
      callback: (m) => {
        if (gen === this.generation) this.inbox.push({ kind: "msg", msg: m });
      },
    });
    void iter.closed().then(
      (err) => {
        if (gen === this.generation) this.inbox.push(err ? { kind: "error", err } : { kind: "restart" });
      },
      (err) => {
        if (gen === this.generation) this.inbox.push({ kind: "error", err });
      },
    );
    let stopped = false;
    this.stopConsumer = () => {
      if (stopped) return;
      stopped = true;
      if (gen === this.generation) this.generation++;
      iter.stop();
      void oc.delete().catch(() => {});
    };
    this.armTimer();
    return lost;
  }

  private *onMessage(m: JsMsg): Generator<WatchEvent> {
    if (m.seq <= this.lastRev) return; // a replay after a consumer reset
    this.lastRev = m.seq;
    const e = toRawEntry(this.b, m);
    if (e === null || !e.key.startsWith(this.prefix)) return;
    const known = this.live.get(e.key);
    if (e.op !== "PUT") {
      const expiredAt = this.expired.get(e.key);
      this.live.delete(e.key);
      this.expired.delete(e.key);
      if (expiredAt !== undefined && expiredAt < e.revision) return; // already reported when it expired
      yield { type: "delete", key: e.key, revision: e.revision };
      return;
    }
    if (e.rec === null) return; // unreadable (warned): skipped as by the other stores; the key keeps its last good state
    if (envelopeExpired(e.rec)) {
      if (known && known.revision > e.revision) return; // superseded by a newer record we already know of
      this.live.delete(e.key);
      if (!this.expired.has(e.key)) {
        this.expired.set(e.key, e.revision);
        yield { type: "delete", key: e.key, revision: e.revision };
      }
      this.reaper.cleanup(e.key, e.revision);
      return;
    }
    this.expired.delete(e.key);
    // With server TTLs the key needs no tracking: messages come in revision order, so none is ever superseded by a
    // record known here first (only a snapshot could know one, and none is taken then).
    if (!this.b.serverTtl && (!known || known.revision <= e.revision)) this.live.set(e.key, { revision: e.revision, expiresAt: e.rec.e });
    // A new record can only bring the timer forward: no scan of every key per message (a backlog replay is O(N)).
    if (e.rec.e !== null && (this.timer === null || e.rec.e < this.timerAt)) this.armAt(e.rec.e);
    yield {
      type: "put",
      kv: { key: e.key, value: e.rec.v, revision: e.revision, expiresAt: e.rec.e, createRevision: envelopeCreated(e.rec, e.revision) },
    };
  }

  /** Synthesised deletes for every tracked key whose recorded expiry has passed (2.9 sends none). */
  private *expireDue(): Generator<WatchEvent> {
    if (this.b.serverTtl) return;
    const now = Date.now();
    for (const [key, k] of this.live) {
      if (k.expiresAt === null || k.expiresAt > now) continue;
      this.live.delete(key);
      this.expired.set(key, k.revision);
      this.reaper.cleanup(key, k.revision);
      // The server has no revision for an expiry; report where the watch is, so revisions never go backwards.
      yield { type: "delete", key, revision: Math.max(k.revision, this.lastRev) };
    }
    this.armTimer();
  }

  /** One timer, at the soonest tracked expiry; it only wakes the generator, which does the work. */
  private armTimer(): void {
    let soonest = Infinity;
    for (const k of this.live.values()) if (k.expiresAt !== null && k.expiresAt < soonest) soonest = k.expiresAt;
    this.armAt(soonest);
  }

  /** Sets the one timer to fire at `at` (epoch ms); Infinity clears it. */
  private armAt(at: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    // With server TTLs (2.11+) the server's delete marker is the expiry: nothing is synthesised here.
    if (at === Infinity || this.signal.aborted || this.b.serverTtl) return;
    this.timerAt = at;
    const delay = Math.min(Math.max(0, at - Date.now()) + 1, MAX_TIMER_MS);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.inbox.push({ kind: "timer" });
    }, delay);
  }
}
