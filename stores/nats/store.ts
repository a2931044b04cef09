// NATS JetStream KV store (works with nats-server 2.9+, e.g. Debian 12's 2.9.10).
//
// Layout
//   One KV bucket (default "flannel", stream "KV_flannel"), history 5, no server-side TTL: 2.9 has no per-key TTL
//   and silently ignores one. The bucket is created on first connect if it is missing (connection.ts).
//   Keys: keys.ts. Values: the record envelope { v, e, o } (decoded in entries.ts); a value that does not decode is skipped
//   with a warning naming the key (never an exception out of get, list or watch); create() treats such a key as
//   taken rather than overwrite what it cannot read.
//
// Expiry by recorded time (the server knows nothing of it)
//   Every reader treats e <= now as absent. create() over an expired record replaces it with a compare-and-set
//   put on the expired record's revision. Expired records are cleaned up with compare-and-set deletes by whoever
//   sees them (get/list/update/watch), so a renewal that raced the cleanup wins or loses cleanly.
//
// Watch: watch.ts.

import { logger } from "../../src/log.ts";
import { hostname } from "node:os";
import type { KV, ListResult, Revision, Store, WatchEvent, WriteOptions } from "../../src/store.ts";
import { checkKey, checkPrefix, checkRevision, checkTtl, checkValue } from "../arguments.ts";
import { decodeEnvelope, type Envelope, encodeEnvelope, envelopeCreated, envelopeExpired } from "../record-envelope.ts";
import { logConnectionChanges, type NatsBucket, type NatsStoreOptions, openBucket } from "./connection.ts";
import type { RawEntry } from "./entries.ts";
import { encodeNatsKey, natsPrefixFilter } from "./keys.ts";
import { casDelete, casWrite, guard, Reaper, snapshot, ttlPut } from "./records.ts";
import { NatsWatch } from "./watch.ts";
import { JetStreamApiCodes, JetStreamApiError } from "@nats-io/jetstream";
import { escapeLogText, logText } from "../../src/log-text.ts";

export type { NatsStoreOptions } from "./connection.ts";
export { decodeNatsKey, encodeNatsKey, natsPrefixFilter } from "./keys.ts";

const log = logger("nats");
const KIND = "nats";

export class NatsStore implements Store {
  readonly kind = KIND;
  readonly location: string;
  readonly bucket: string;
  private readonly reaper: Reaper;
  /** Aborted by close(): ends every running watch. */
  private readonly closing = new AbortController();
  private closed = false;
  /**
   * Until the first watch, the last list's entries (2.9, no server TTL): a watch from that list's revision seeds its
   * expiry tracking from them instead of listing the prefix again right after the agent's own list (10k leases:
   * ~200 ms of CPU just after ready). Kept only until the first watch, so a later relist never pins its entries.
   */
  private beforeWatch: { prefix: string; revision: number; entries: RawEntry[] } | null = null;
  private watched = false;

  private constructor(
    private readonly b: NatsBucket,
    private readonly owner: string,
  ) {
    this.bucket = b.bucket;
    this.location = b.location;
    this.reaper = new Reaper(b);
  }

  static async connect(opts: NatsStoreOptions): Promise<NatsStore> {
    const b = await openBucket(opts);
    logConnectionChanges(b.nc);
    return new NatsStore(b, opts.owner ?? hostname());
  }

  private encode(value: Uint8Array, opts: WriteOptions | undefined, created?: Revision): Uint8Array {
    checkValue(KIND, value);
    const ttl = checkTtl(KIND, opts);
    return encodeEnvelope(value, ttl === null ? null : Date.now() + ttl, this.owner, created);
  }

  // -- reads ---------------------------------------------------------------------------------------------------

  /** The current entry of a key, null when absent or deleted; rec null when undecodable (warned). */
  private async readEntry(key: string, natsKey: string): Promise<{ revision: number; rec: Envelope | null } | null> {
    const e = await guard(this.b, `get ${key}`, () => this.b.kv.get(natsKey));
    if (e === null || e.operation !== "PUT") return null;
    const rec = decodeEnvelope(e.value);
    if (typeof rec === "string") {
      log.warn(
        `NATS bucket ${this.b.bucket}: skipping key ${logText(key)} (${logText(natsKey)}) at revision ${e.revision}: ${escapeLogText(rec)}`,
      );
      return { revision: e.revision, rec: null };
    }
    return { revision: e.revision, rec };
  }

  async get(key: string): Promise<KV | null> {
    checkKey(KIND, key);
    const natsKey = encodeNatsKey(key);
    const cur = await this.readEntry(key, natsKey);
    if (cur === null || cur.rec === null) return null;
    if (envelopeExpired(cur.rec)) {
      this.reaper.cleanup(key, cur.revision);
      return null;
    }
    return { key, value: cur.rec.v, revision: cur.revision, expiresAt: cur.rec.e, createRevision: envelopeCreated(cur.rec, cur.revision) };
  }

  async list(prefix: string): Promise<ListResult> {
    checkPrefix(KIND, prefix);
    const { entries, revision } = await snapshot(this.b, natsPrefixFilter(prefix));
    if (!this.watched && !this.b.serverTtl) this.beforeWatch = { prefix, revision, entries };
    const now = Date.now();
    const items: KV[] = [];
    for (const e of entries) {
      if (e.op !== "PUT" || e.rec === null || !e.key.startsWith(prefix)) continue;
      if (envelopeExpired(e.rec, now)) {
        this.reaper.cleanup(e.key, e.revision);
        continue;
      }
      items.push({
        key: e.key,
        value: e.rec.v,
        revision: e.revision,
        expiresAt: e.rec.e,
        createRevision: envelopeCreated(e.rec, e.revision),
      });
    }
    items.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    return { items, revision };
  }

  // -- writes --------------------------------------------------------------------------------------------------

  async create(key: string, value: Uint8Array, opts?: WriteOptions): Promise<Revision | null> {
    checkKey(KIND, key);
    const natsKey = encodeNatsKey(key);
    const data = this.encode(value, opts);
    const ttl = this.serverTtl(opts);
    const ttlHeader = ttl === null ? undefined : `${Math.max(1, Math.ceil(ttl / 1000))}s`;
    // kv.create succeeds on an absent key and on one whose last entry is a DEL/PURGE marker (or a TTL marker).
    const first = await casWrite(this.b, `create ${key}`, () => this.b.kv.create(natsKey, data, ttlHeader));
    if (first !== null) return first;
    const cur = await this.readEntry(key, natsKey);
    if (cur === null) return casWrite(this.b, `create ${key}`, () => this.b.kv.create(natsKey, data, ttlHeader)); // deleted meanwhile
    if (cur.rec === null || !envelopeExpired(cur.rec)) return null;
    // Expired: replace it in one compare-and-set write on its revision (a renewal racing us makes this fail).
    return casWrite(this.b, `create ${key}`, () => this.replace(natsKey, data, cur.revision, ttl));
  }

  async update(key: string, value: Uint8Array, revision: Revision, opts?: WriteOptions): Promise<Revision | null> {
    checkKey(KIND, key);
    const natsKey = encodeNatsKey(key);
    this.encode(value, opts); // argument checks before any I/O
    checkRevision(KIND, revision);
    if (revision === 0) return null; // no key ever has it
    const cur = await this.readEntry(key, natsKey);
    if (cur === null || cur.revision !== revision || cur.rec === null) return null;
    if (envelopeExpired(cur.rec)) {
      this.reaper.cleanup(key, cur.revision);
      return null;
    }
    const data = this.encode(value, opts, envelopeCreated(cur.rec, cur.revision));
    return casWrite(this.b, `update ${key}`, () => this.replace(natsKey, data, revision, this.serverTtl(opts)));
  }

  /** The ttl the server enforces for this write (nats-server >= 2.11 buckets), or null when expiry is the value's only. */
  private serverTtl(opts: WriteOptions | undefined): number | null {
    return this.b.serverTtl ? checkTtl(KIND, opts) : null;
  }

  /** A compare-and-set write on `revision`: with the server's TTL (renewal by CAS) where the bucket has them. */
  private replace(natsKey: string, data: Uint8Array, revision: number, ttl: number | null): Promise<number> {
    return this.b.serverTtl ? ttlPut(this.b, natsKey, data, revision, ttl) : this.b.kv.update(natsKey, data, revision);
  }

  async delete(key: string, revision: Revision): Promise<boolean> {
    checkKey(KIND, key);
    const natsKey = encodeNatsKey(key);
    checkRevision(KIND, revision);
    if (revision === 0) return false;
    const cur = await this.readEntry(key, natsKey);
    if (cur === null || cur.revision !== revision) return false;
    const deleted = await casDelete(this.b, key, natsKey, revision);
    // An expired record was already absent: the delete only cleaned it up.
    return deleted && (cur.rec === null || !envelopeExpired(cur.rec));
  }

  /** The sequence of the last message under the prefix (a put or a deletion marker), from the stream's leader. */
  async currentRevision(prefix: string): Promise<Revision> {
    checkPrefix(KIND, prefix);
    const subject = this.b.subjectPrefix + natsPrefixFilter(prefix);
    return guard(this.b, `current revision of ${prefix}`, async () => {
      try {
        const m = await this.b.jsm.streams.getMessage(this.b.stream, { last_by_subj: subject });
        return m?.seq ?? 0;
      } catch (err) {
        if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.NoMessageFound) return 0;
        throw err;
      }
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.closing.abort();
    await this.reaper.close();
    await this.b.nc.close().catch(() => {});
  }

  watch(prefix: string, afterRevision: Revision, signal: AbortSignal): AsyncIterable<WatchEvent> {
    checkPrefix(KIND, prefix);
    checkRevision(KIND, afterRevision, "afterRevision");
    const l = this.beforeWatch;
    this.beforeWatch = null;
    this.watched = true;
    const seed = l !== null && l.prefix === prefix && l.revision === afterRevision ? l.entries : null;
    return new NatsWatch(this.b, this.reaper, prefix, afterRevision, AbortSignal.any([signal, this.closing.signal]), seed).run();
  }
}
