// SQLite store (the lab store): one database file shared by every agent process on a machine.
//
// Layout (kine-like, simplified):
//   kv(key PK, revision, expires_at, record)       current state, one row per live (or not yet reaped) key
//   changes(revision AUTOINCREMENT PK, key, op, record, at)   append-only change log; its id IS the store revision
//   meta(name PK, value)                           'trimmed_through': every change <= it has been trimmed
//
// Every write is one `BEGIN IMMEDIATE` transaction, so writers from all processes are serialised by SQLite's lock
// and revisions are global, distinct and increasing. Records are CBOR `{ v: bytes, e: expiresAt|null }`; the
// expires_at column mirrors `e` so readers can filter expired rows in SQL.
//
// Expiry is by recorded time: a row whose expires_at has passed is absent for every reader. Watchers (in any
// process) reap expired rows with a delete written to the change log, so every watcher sees a "delete" event for it
// in revision order. Reaping runs inside the write lock and re-checks expiry, so concurrent reapers are harmless.

import { logger } from "../src/log.ts";
import { Database } from "bun:sqlite";
import { type FSWatcher, mkdirSync, statSync, watch } from "node:fs";
import { basename, dirname } from "node:path";
import {
  type KV,
  type ListResult,
  type Revision,
  type Store,
  StoreUnavailableError,
  type WatchEvent,
  type WriteOptions,
} from "../src/store.ts";
import { checkKey, checkPrefix, checkRevision, checkTtl, checkValue, errorText } from "./arguments.ts";
import { MAX_ENVELOPE_BYTES, decodeEnvelope, encodeEnvelope, envelopeCreated } from "./record-envelope.ts";
import { escapeLogText, logText } from "../src/log-text.ts";

const tooBig = (size: number): string => `record is ${size} bytes, over the ${MAX_ENVELOPE_BYTES}-byte limit`;

const log = logger("store:sqlite");
const KIND = "sqlite";

export interface SqliteStoreOptions {
  /**
   * Without file events (no inotify): how often a watcher polls (ms). With them: how soon after a file event it
   * looks once more (a commit's WAL write can be seen before its index is). Default 50. Local writes wake at once.
   */
  pollMs?: number;
  /** With file events: the longest a watcher waits without one (a safety net, ms). Default 5000. */
  idlePollMs?: number;
  /** How many change-log entries to keep; older ones are trimmed (watchers behind them get "relist"). Default 10,000. */
  historyEntries?: number;
  /** SQLite busy timeout (ms): how long a write waits for another process's lock. Default 5000. */
  busyTimeoutMs?: number;
}

interface Row {
  key: string;
  revision: number;
  expires_at: number | null;
  /** null when over the size limit (see RECORD): the blob is never read into memory. */
  record: Uint8Array | null;
  size: number;
}

/** The record column as read: a record over the limit is left in the file, only its size is read. */
const RECORD = `CASE WHEN length(record) > ${MAX_ENVELOPE_BYTES} THEN NULL ELSE record END AS record, length(record) AS size`;

interface ChangeRow {
  revision: number;
  key: string;
  op: string;
  record: Uint8Array | null;
  size: number | null;
}

/** Trim the change log whenever the global revision hits a multiple of this (exactly one writer sees each one). */
const TRIM_EVERY = 64;
/** Most change rows a watcher reads per poll, and most expired rows reaped per transaction. */
const BATCH = 1000;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS kv (
  key TEXT PRIMARY KEY NOT NULL,
  revision INTEGER NOT NULL,
  expires_at INTEGER,
  record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_expires_at ON kv(expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS changes (
  revision INTEGER PRIMARY KEY AUTOINCREMENT,
  key TEXT NOT NULL,
  op TEXT NOT NULL CHECK (op IN ('put', 'delete')),
  record BLOB,
  at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta(name, value) VALUES ('schema', 1), ('trimmed_through', 0);
`;

export class SqliteStore implements Store {
  readonly kind = "sqlite";
  readonly location: string;

  private db: Database;
  /** dev:inode of the file `db` has open (null for :memory:): a different one at the path means it was replaced. */
  private fileId: string | null;
  /** Bumped on every reopen: a watcher that sees it change re-lists (the new file has its own revisions). */
  private generation = 0;
  private readonly opts: Required<SqliteStoreOptions>;
  private readonly pollMs: number;
  private readonly historyEntries: number;
  private readonly busyTimeoutMs: number;
  private closed = false;
  /** Aborted by close(): ends every watcher of this instance. */
  private readonly closing = new AbortController();
  /** Pending watcher sleeps; a local write resolves them so local changes are seen at once. */
  private readonly wakers = new Set<() => void>();
  /** Writes through this connection: they do not move PRAGMA data_version, so watchers count them here. */
  private localWrites = 0;
  /** Watches the database's directory while a watcher runs: other processes' commits wake it (no poll query). */
  private fileEvents: FSWatcher | null = null;
  private fileEventsFailed = false;
  /** Bumped on every file event concerning the database (its file, -wal, -journal; replaced or deleted). */
  private fileEventCount = 0;

  private constructor(db: Database, path: string, opts: Required<SqliteStoreOptions>) {
    this.db = db;
    this.fileId = fileIdOf(path);
    this.opts = opts;
    this.location = path;
    this.pollMs = opts.pollMs;
    this.historyEntries = opts.historyEntries;
    this.busyTimeoutMs = opts.busyTimeoutMs;
  }

  /** Opens (creating if needed) the database file and its parent directory, in WAL mode, with the schema. */
  static open(path: string, opts: SqliteStoreOptions = {}): SqliteStore {
    const o: Required<SqliteStoreOptions> = {
      pollMs: positiveInt(opts.pollMs ?? 50, "pollMs"),
      idlePollMs: positiveInt(opts.idlePollMs ?? 5000, "idlePollMs"),
      historyEntries: positiveInt(opts.historyEntries ?? 10_000, "historyEntries"),
      busyTimeoutMs: positiveInt(opts.busyTimeoutMs ?? 5000, "busyTimeoutMs"),
    };
    return new SqliteStore(openDatabase(path, o), path, o);
  }

  async get(key: string): Promise<KV | null> {
    checkKey(KIND, key);
    const row = this.read(() =>
      this.db
        .query(`SELECT key, revision, expires_at, ${RECORD} FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)`)
        .get(key, Date.now()),
    ) as Row | null;
    if (!row) return null;
    const kv = rowToKV(row);
    if (typeof kv === "string") {
      log.warn(`${this.location}: skipping corrupt record for key ${logText(key)}: ${escapeLogText(kv)}`);
      return null;
    }
    return kv;
  }

  async list(prefix: string): Promise<ListResult> {
    checkPrefix(KIND, prefix);
    const { rows, revision } = this.read(() =>
      this.db
        .transaction(() => ({
          rows: this.db
            .query(
              `SELECT key, revision, expires_at, ${RECORD} FROM kv
               WHERE key >= ?1 AND substr(key, 1, length(?1)) = ?1 AND (expires_at IS NULL OR expires_at > ?2)
               ORDER BY key`,
            )
            .all(prefix, Date.now()) as Row[],
          revision: this.headRevision(),
        }))
        .deferred(),
    );
    const items: KV[] = [];
    for (const row of rows) {
      const kv = rowToKV(row);
      if (typeof kv === "string") log.warn(`${this.location}: skipping corrupt record for key ${logText(row.key)}: ${escapeLogText(kv)}`);
      else items.push(kv);
    }
    return { items, revision };
  }

  async create(key: string, value: Uint8Array, opts?: WriteOptions): Promise<Revision | null> {
    checkKey(KIND, key);
    checkValue(KIND, value);
    const ttlMs = checkTtl(KIND, opts);
    return this.write(() => {
      const now = Date.now(); // taken under the write lock, so expiry decisions are consistent across processes
      const cur = this.currentRow(key);
      if (cur && !isExpired(cur, now)) return null;
      // An expired row still present: record its deletion first so watchers see delete then put.
      if (cur) this.deleteRow(key, now);
      return this.putRow(key, value, ttlMs, now);
    });
  }

  async update(key: string, value: Uint8Array, revision: Revision, opts?: WriteOptions): Promise<Revision | null> {
    checkKey(KIND, key);
    checkValue(KIND, value);
    checkRevision(KIND, revision);
    const ttlMs = checkTtl(KIND, opts);
    return this.write(() => {
      const now = Date.now();
      const cur = this.currentRow(key);
      if (!cur || isExpired(cur, now) || cur.revision !== revision) return null;
      const old = decodeEnvelope(cur.record);
      return this.putRow(key, value, ttlMs, now, typeof old === "string" ? undefined : envelopeCreated(old, cur.revision));
    });
  }

  async delete(key: string, revision: Revision): Promise<boolean> {
    checkKey(KIND, key);
    checkRevision(KIND, revision);
    return this.write(() => {
      const now = Date.now();
      const cur = this.currentRow(key);
      if (!cur || isExpired(cur, now) || cur.revision !== revision) return false;
      this.deleteRow(key, now);
      return true;
    });
  }

  /**
   * Sleeps until something can have changed: a file event on the database (inotify on its directory: another
   * process committed, or the file was replaced), a write through this connection, or the soonest recorded expiry;
   * with no file events at all, every pollMs. Then PRAGMA data_version tells whether another connection committed,
   * and the change log is read only when it or a local write says so. An idle watcher makes one cheap look per
   * idlePollMs (the safety net for a missed event), not one query every 50 ms.
   */
  async *watch(prefix: string, afterRevision: Revision, signal: AbortSignal): AsyncIterable<WatchEvent> {
    checkPrefix(KIND, prefix);
    checkRevision(KIND, afterRevision, "afterRevision");
    const stop = AbortSignal.any([signal, this.closing.signal]);
    let pos = afterRevision;
    let reported = afterRevision;
    let failing = false;
    let seenVersion = -1;
    let seenLocal = -1;
    let nextExpiry = 0;
    let generation = this.generation;
    this.watchFiles();
    /** When to look once more after a file event (a commit's WAL write can be seen before its index is). */
    let lookAgainAt = 0;
    while (!stop.aborted) {
      const eventsBefore = this.fileEventCount;
      let batch: { events: WatchEvent[]; pos: Revision; more: boolean } | null = null;
      try {
        this.checkOpen();
        if (generation !== this.generation) {
          // Another file: its revisions are not ours. Re-list, then follow it from its current head.
          generation = this.generation;
          pos = reported = this.headRevision();
          seenVersion = -1;
          nextExpiry = 0;
          yield { type: "relist" };
          continue;
        }
        const version = this.dataVersion();
        const now = Date.now();
        if (version !== seenVersion || this.localWrites !== seenLocal || now >= nextExpiry) {
          if (now >= nextExpiry) this.reapExpired();
          // The version read before the change log, never after it: a commit by another process that lands while
          // we read moves data_version past what we saw, so the next look reads again. (Taken after the read, such
          // a commit was marked as seen without being read: the watch stalled until the next commit or the
          // stale-watch restart, ~10 s late for the last peer of a join storm.) This connection's own writes, the
          // reaper's included, never move data_version: localWrites counts them.
          seenVersion = version;
          seenLocal = this.localWrites;
          batch = this.readChanges(prefix, pos);
          nextExpiry = this.soonestExpiry();
        }
        if (failing) log.info(`${this.location}: watch on "${prefix}" recovered`);
        failing = false;
      } catch (err) {
        if (stop.aborted) return;
        if (!failing) log.warn(`${this.location}: watch on "${prefix}" poll failed, retrying: ${errorText(err)}`);
        failing = true;
        await this.sleep(this.pollMs * 4, stop);
        continue;
      }
      if (batch) {
        pos = batch.pos;
        for (const ev of batch.events) {
          if (stop.aborted) return;
          if (ev.type === "put") reported = ev.kv.revision;
          else if (ev.type === "delete") reported = ev.revision;
          yield ev;
        }
        if (pos > reported && !stop.aborted) {
          reported = pos;
          yield { type: "progress", revision: pos };
        }
        if (batch.more) continue;
      }
      if (!this.fileEvents) {
        await this.sleep(this.pollMs, stop);
        continue;
      }
      // A file event while we looked (nobody was asleep to be woken): look again now, and once more shortly.
      if (this.fileEventCount !== eventsBefore) {
        lookAgainAt = Date.now() + this.pollMs;
        continue;
      }
      const now = Date.now();
      let until = Math.min(now + this.opts.idlePollMs, nextExpiry);
      if (lookAgainAt > now) until = Math.min(until, lookAgainAt);
      else lookAgainAt = 0;
      await this.sleep(Math.max(1, until - now), stop);
      if (this.fileEventCount !== eventsBefore) lookAgainAt = Date.now() + this.pollMs;
    }
  }

  /** Starts the directory watch once (null when the file system gives no events: then watchers poll). */
  private watchFiles(): FSWatcher | null {
    if (this.fileEvents || this.fileEventsFailed || this.location === ":memory:") return this.fileEvents;
    const base = basename(this.location);
    try {
      this.fileEvents = watch(dirname(this.location), { persistent: false }, (_type, name) => {
        // Only the database and its -wal/-journal (not -shm: it is written through mmap and never reports).
        if (name !== null && !String(name).startsWith(base)) return;
        this.fileEventCount++;
        for (const wake of [...this.wakers]) wake();
      });
      this.fileEvents.on("error", () => {
        this.fileEvents?.close();
        this.fileEvents = null;
        this.fileEventsFailed = true;
        for (const wake of [...this.wakers]) wake(); // fall back to polling at once
      });
    } catch (e) {
      this.fileEventsFailed = true;
      log.info(`${this.location}: no file events (${errorText(e)}); watchers poll every ${this.pollMs} ms`);
    }
    return this.fileEvents;
  }

  async currentRevision(prefix: string): Promise<Revision> {
    checkPrefix(KIND, prefix);
    return this.read(() => this.headRevision());
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.closing.abort();
    this.fileEvents?.close();
    this.fileEvents = null;
    for (const wake of [...this.wakers]) wake();
    this.db.close(false);
  }

  /**
   * Drops change-log entries, keeping the newest `keepEntries`. Watchers positioned before the cut get "relist".
   * Runs on its own every TRIM_EVERY revisions with the configured historyEntries; public for tests and tools.
   */
  trimHistory(keepEntries: number = this.historyEntries): void {
    if (!Number.isSafeInteger(keepEntries) || keepEntries < 0) throw new Error("trimHistory: keepEntries must be >= 0");
    this.write(() => this.trimLocked(keepEntries));
  }

  // ---- internals ----

  /** Changes committed by other connections since this one last looked (SQLite's own counter: no table read). */
  private dataVersion(): number {
    return (this.db.query("PRAGMA data_version").get() as { data_version: number }).data_version;
  }

  /** The soonest recorded expiry (epoch ms), or Infinity. */
  private soonestExpiry(): number {
    const r = this.db.query("SELECT min(expires_at) AS t FROM kv WHERE expires_at IS NOT NULL").get() as { t: number | null } | null;
    return r?.t ?? Number.POSITIVE_INFINITY;
  }

  private headRevision(): Revision {
    const r = this.db.query("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").get() as { seq: number } | null;
    return r?.seq ?? 0;
  }

  private currentRow(key: string): Row | null {
    return this.db.query(`SELECT key, revision, expires_at, ${RECORD} FROM kv WHERE key = ?`).get(key) as Row | null;
  }

  /** Appends to the change log (inside a write transaction) and returns the new global revision. */
  private appendChange(key: string, op: "put" | "delete", record: Uint8Array | null, now: number): Revision {
    const res = this.db.query("INSERT INTO changes(key, op, record, at) VALUES (?, ?, ?, ?)").run(key, op, record, now);
    const rev = Number(res.lastInsertRowid);
    if (rev % TRIM_EVERY === 0) this.trimLocked(this.historyEntries);
    return rev;
  }

  private putRow(key: string, value: Uint8Array, ttlMs: number | null, now: number, created?: Revision): Revision {
    const expiresAt = ttlMs === null ? null : now + ttlMs;
    const record = encodeEnvelope(value, expiresAt, undefined, created);
    const rev = this.appendChange(key, "put", record, now);
    this.db.query("INSERT OR REPLACE INTO kv(key, revision, expires_at, record) VALUES (?, ?, ?, ?)").run(key, rev, expiresAt, record);
    return rev;
  }

  private deleteRow(key: string, now: number): Revision {
    const rev = this.appendChange(key, "delete", null, now);
    this.db.query("DELETE FROM kv WHERE key = ?").run(key);
    return rev;
  }

  private trimLocked(keepEntries: number): void {
    const cut = this.headRevision() - keepEntries;
    if (cut <= 0) return;
    this.db.query("DELETE FROM changes WHERE revision <= ?").run(cut);
    this.db.query("UPDATE meta SET value = max(value, ?) WHERE name = 'trimmed_through'").run(cut);
  }

  /** Deletes expired rows through the change log. Cheap read first: the write lock is taken only when needed. */
  private reapExpired(): void {
    const any = this.db.query("SELECT 1 AS x FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT 1").get(Date.now());
    if (!any) return;
    const reaped = this.write(() => {
      const now = Date.now();
      const rows = this.db.query("SELECT key FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?").all(now, BATCH) as {
        key: string;
      }[];
      for (const r of rows) this.deleteRow(r.key, now);
      return rows.length;
    });
    if (reaped > 0) log.debug(`${this.location}: reaped ${reaped} expired record(s)`);
  }

  /** One consistent read of the change log after `pos`. */
  private readChanges(prefix: string, pos: Revision): { events: WatchEvent[]; pos: Revision; more: boolean } {
    return this.db
      .transaction(() => {
        const trimmed =
          (
            this.db.query("SELECT value FROM meta WHERE name = 'trimmed_through'").get() as {
              value: number;
            } | null
          )?.value ?? 0;
        const head = this.headRevision();
        // pos > head: the database was replaced under us; we cannot know what changed either.
        if (pos < trimmed || pos > head) {
          log.info(`${this.location}: watch on "${prefix}" at revision ${pos} lost history (kept ${trimmed}..${head})`);
          return { events: [{ type: "relist" } as WatchEvent], pos: head, more: false };
        }
        const upTo = Math.min(head, pos + BATCH);
        const rows = this.db
          .query(
            `SELECT revision, key, op, ${RECORD} FROM changes
             WHERE revision > ?1 AND revision <= ?2 AND substr(key, 1, length(?3)) = ?3 ORDER BY revision`,
          )
          .all(pos, upTo, prefix) as ChangeRow[];
        const events: WatchEvent[] = [];
        for (const row of rows) {
          const ev = changeToEvent(row);
          if (typeof ev === "string") {
            log.warn(`${this.location}: skipping corrupt change ${row.revision} for key ${logText(row.key)}: ${escapeLogText(ev)}`);
          } else {
            events.push(ev);
          }
        }
        return { events, pos: upTo, more: upTo < head };
      })
      .deferred();
  }

  private read<T>(fn: () => T): T {
    this.checkOpen();
    try {
      return fn();
    } catch (err) {
      throw this.wrap(err);
    }
  }

  private write<T>(fn: () => T): T {
    this.checkOpen();
    let result: T;
    try {
      result = this.db.transaction(fn).immediate();
    } catch (err) {
      throw this.wrap(err);
    }
    this.localWrites++;
    for (const wake of [...this.wakers]) wake();
    return result;
  }

  private wrap(err: unknown): unknown {
    const code = (err as { code?: unknown })?.code;
    if (code === "SQLITE_BUSY" || code === "SQLITE_LOCKED") {
      return new StoreUnavailableError(`sqlite ${this.location}: database stayed locked by another process for ${this.busyTimeoutMs} ms`, {
        cause: err,
      });
    }
    return err;
  }

  private checkOpen(): void {
    if (this.closed) throw new Error(`sqlite ${this.location}: store is closed`);
    if (this.location === ":memory:") return;
    const id = fileIdOf(this.location);
    if (id === this.fileId) return;
    // The file was deleted or replaced (rm + config put, a restore from backup): follow the path, as an operator
    // expects, instead of working on in a file nobody else sees.
    log.warn(`${this.location}: the database file was ${id === null ? "deleted" : "replaced"}; reopening it (watches re-list)`);
    const db = openDatabase(this.location, this.opts);
    abandoned.push(this.db);
    this.db = db;
    this.fileId = fileIdOf(this.location);
    this.generation++;
  }

  private sleep(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        this.wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
      this.wakers.add(done);
    });
  }
}

// ---- records: untrusted bytes in, validated values out ----

function rowToKV(row: Row): KV | string {
  if (!Number.isSafeInteger(row.revision) || row.revision <= 0) return "bad revision column";
  const rec = row.record === null && row.size > MAX_ENVELOPE_BYTES ? tooBig(row.size) : decodeEnvelope(row.record);
  if (typeof rec === "string") return rec;
  if (rec.e !== row.expires_at) return "expiry in the record does not match the expires_at column";
  return { key: row.key, value: rec.v, revision: row.revision, expiresAt: rec.e, createRevision: envelopeCreated(rec, row.revision) };
}

function changeToEvent(row: ChangeRow): WatchEvent | string {
  if (row.op === "delete") return { type: "delete", key: row.key, revision: row.revision };
  if (row.op !== "put") return `unknown op "${row.op}"`;
  const rec = row.record === null && (row.size ?? 0) > MAX_ENVELOPE_BYTES ? tooBig(row.size ?? 0) : decodeEnvelope(row.record);
  if (typeof rec === "string") return rec;
  return {
    type: "put",
    kv: { key: row.key, value: rec.v, revision: row.revision, expiresAt: rec.e, createRevision: envelopeCreated(rec, row.revision) },
  };
}

function isExpired(row: Row, now: number): boolean {
  return row.expires_at !== null && row.expires_at <= now;
}

function positiveInt(n: number, name: string): number {
  if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`sqlite store: ${name} must be a positive integer, got ${n}`);
  return n;
}

/** The database file opened, in WAL mode, with the schema (created, with its directory, if missing). */
function openDatabase(path: string, o: Required<SqliteStoreOptions>): Database {
  if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
  let db: Database;
  try {
    db = new Database(path, { create: true, readwrite: true });
  } catch (err) {
    throw new StoreUnavailableError(`sqlite ${path}: cannot open database: ${errorText(err)}`, { cause: err });
  }
  try {
    // busy_timeout first: switching to WAL and creating the schema may wait for another process's lock.
    db.run(`PRAGMA busy_timeout = ${o.busyTimeoutMs}`);
    const mode = db.query("PRAGMA journal_mode = WAL").get() as { journal_mode?: string } | null;
    if (path !== ":memory:" && mode?.journal_mode?.toLowerCase() !== "wal") {
      throw new Error(`could not switch to WAL (journal_mode is ${String(mode?.journal_mode)})`);
    }
    db.run("PRAGMA synchronous = NORMAL");
    db.transaction(() => db.run(SCHEMA)).immediate();
  } catch (err) {
    db.close(false);
    throw new StoreUnavailableError(`sqlite ${path}: cannot prepare database: ${errorText(err)}`, { cause: err });
  }
  return db;
}

/** dev:inode of the file at `path`; null if there is none (or for :memory:). */
function fileIdOf(path: string): string | null {
  if (path === ":memory:") return null;
  const st = statSync(path, { throwIfNoEntry: false });
  return st ? `${st.dev}:${st.ino}` : null;
}

/**
 * Connections to files that were replaced under us. Never closed: closing the last connection to a WAL database
 * checkpoints and then unlinks "<path>-wal" and "<path>-shm" by name, which would now be the new file's.
 */
const abandoned: Database[] = [];
