// The store interface: everything the lease protocol needs from etcd, NATS JetStream KV or SQLite, and nothing more.
// A store knows keys, revisions, create-if-absent, compare-and-set, expiry and watch. It knows nothing of leases.
//
// The contract (every store keeps it; test/stores/conformance.ts holds each one to it):
// - Keys are logical and store-agnostic: "config" and "subnets/10.5.52.0-24". Each store maps them onto its own
//   layout (etcd: "<prefix>/config"; NATS and SQLite: see their files). Values are opaque bytes. A key is a non-empty
//   string without NUL; a prefix may be empty. Bad arguments (such a key, a value that is not a Uint8Array, a ttlMs
//   that is not a positive number, a revision that is not a non-negative integer) throw an Error naming the problem.
// - Revisions are positive integers, increasing in store order. Revision 0 is no key's revision: update() with it
//   returns null and delete() false, like any other revision that does not match.
// - Expiry: a record whose expiresAt has passed is absent for every reader of every method, whether the server
//   enforces TTLs (etcd, NATS >= 2.11) or the store does it by recorded time (SQLite, NATS 2.9/2.10). When a record
//   expires, watchers see a "delete" event for it (from the server, or synthesised by the store).
// - A record the store cannot read (not its encoding) is skipped with a warning by get (null), list and watch; it
//   never reads as a deletion, and create() treats its key as taken.
// - Relist: when a watch cannot say what happened since its last event (compaction, history loss, a replaced
//   database), it yields { type: "relist" } and continues; the consumer lists again and diffs.
// - Errors: a store that cannot be reached right now throws StoreUnavailableError (the caller retries); any other
//   Error is an answer (refused, misconfigured) and is not retried blindly. watch() never ends by itself before its
//   signal aborts or the store closes: it reconnects and resumes on its own.
// - Caught up: currentRevision(prefix) is a linearizable read (a quorum read where the store is replicated) of the
//   newest revision a watch on `prefix` must have delivered, counting its events and { type: "progress" } reports.
//   A watch that stays behind it is stale (alive but stuck on a hung member or a dead consumer); src/peer-watch.ts
//   detects that once for every store and restarts the watch. A store whose watch skips a record (unreadable, not
//   its key) reports progress past it, so a skipped record never looks like a stuck watch.

export type Revision = number;

export interface KV {
  key: string;
  value: Uint8Array;
  /** Store revision of the last write to this key (etcd mod_revision, NATS sequence, SQLite row revision). */
  revision: Revision;
  /** Epoch milliseconds; null = never expires (a reservation, or the config). */
  expiresAt: number | null;
  /**
   * Store revision at which the key was created (etcd create_revision; SQLite and NATS keep it in the record and
   * carry it over on update). Unchanged by renewals: the lease validity rules let the older of two records win.
   */
  createRevision?: Revision;
}

export interface WriteOptions {
  /** Time to live in milliseconds; absent = the record never expires. */
  ttlMs?: number;
}

export type WatchEvent =
  | { type: "put"; kv: KV }
  /** The key is gone (deleted or expired). `revision` is the store revision of the deletion where known. */
  | { type: "delete"; key: string; revision: Revision }
  /**
   * The store cannot say what happened since the last event (etcd compaction, NATS history loss, a gap).
   * The consumer must list() again and diff; the watch continues on its own after this event
   * from the revision the store resumed at.
   */
  | { type: "relist" }
  /** Every change under the prefix up to `revision` has been delivered (nothing else to say about it). */
  | { type: "progress"; revision: Revision };

/** What a reader of list() or watch() needs of each record. */
export interface ReadOptions {
  /**
   * false: the caller needs to know only whether a record expires, not when (the free-subnet pick, the peer watch:
   * an expired record is removed by the server or the store anyway). A store that keeps expiry apart from the
   * record (etcd: one TimeToLive request per lease) then need not read it: such a record may come with
   * expiresAt = UNREAD_EXPIRY. A record without expiry still has null. Default true.
   */
  expiry?: boolean;
}

/** expiresAt of a record that expires at a time the store did not read (a read with { expiry: false }). */
export const UNREAD_EXPIRY = Number.POSITIVE_INFINITY;

export interface ListResult {
  items: KV[];
  /** The store revision the list is consistent with; watch(prefix, revision) continues after it. */
  revision: Revision;
}

export interface Store {
  /** "sqlite" | "etcd" | "nats": for logs and messages. */
  readonly kind: string;
  /** Where it is: path or endpoint list, for logs and messages. */
  readonly location: string;

  get(key: string): Promise<KV | null>;
  list(prefix: string, opts?: ReadOptions): Promise<ListResult>;
  /** Creates the key only if it is absent (or expired). Returns the new revision, or null if it exists. */
  create(key: string, value: Uint8Array, opts?: WriteOptions): Promise<Revision | null>;
  /**
   * Compare-and-set: writes only if the key's current revision is `revision` and it has not expired.
   * A new ttlMs replaces the old expiry; no ttlMs means the record never expires.
   * Returns the new revision, or null on a mismatch (changed, deleted or expired meanwhile).
   */
  update(key: string, value: Uint8Array, revision: Revision, opts?: WriteOptions): Promise<Revision | null>;
  /** Deletes the key only if its current revision is `revision`. Returns false on a mismatch. */
  delete(key: string, revision: Revision): Promise<boolean>;
  /**
   * Every change under `prefix` after `afterRevision`, in store order, until `signal` aborts.
   * Reconnects by itself and resumes where it left off; yields { type: "relist" } when it cannot.
   */
  watch(prefix: string, afterRevision: Revision, signal: AbortSignal, opts?: ReadOptions): AsyncIterable<WatchEvent>;
  /**
   * Linearizable: the newest revision under `prefix` (the store's whole revision where its watch reports progress
   * up to that). Cheap enough to call every few seconds. Throws StoreUnavailableError when the store is unreachable.
   */
  currentRevision(prefix: string): Promise<Revision>;
  close(): Promise<void>;
}

/** A store that cannot be reached (dead endpoint, refused connection): retried, and named in the message. */
export class StoreUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "StoreUnavailableError";
  }
}

/**
 * Largest value a store hands out (lease JSON and configs are a few hundred bytes). A stored record over it is
 * skipped like any unreadable record, before it is decoded or copied, so a flood of 1 MB records costs no memory.
 */
export const MAX_VALUE_BYTES = 64 * 1024;

export const CONFIG_KEY = "config";
export const SUBNETS_PREFIX = "subnets/";
