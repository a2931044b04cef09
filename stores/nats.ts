// NATS JetStream KV store (works with nats-server 2.9+, e.g. Debian 12's 2.9.10).
//
// Layout
//   One KV bucket (default "flannel", stream "KV_flannel"), history 5, no server-side TTL: 2.9 has no per-key TTL
//   and silently ignores one. The bucket is created on first connect if it is missing.
//
// Key scheme (logical store key -> NATS KV key). NATS KV keys allow only [-/_=.a-zA-Z0-9], "." separates tokens.
//   "/"                 -> "."      (path segments become tokens, so prefix "subnets/" lists as filter "subnets.>")
//   "."                 -> "_"
//   ":"                 -> "="
//   a-z A-Z 0-9 "-"     -> themselves
//   any other character -> "/" + two lowercase hex digits per UTF-8 byte ("_" -> "/5f", "=" -> "/3d", "&" -> "/26")
//   The scheme knows nothing of what keys mean: a dual-stack subnet key's "&" is escaped like any other character.
//   Examples:  config                                   -> config
//              subnets/10.5.52.0-24                     -> subnets.10_5_52_0-24
//              subnets/10.5.52.0-24&fc00:0:0:34::-64    -> subnets.10_5_52_0-24/26fc00=0=0=34==-64
//   Empty path segments ("a//b", "") are rejected. Decoding is exact: a NATS key that is not the
//   encoding of some logical key is skipped with a warning.
//
// Values
//   Each value is a CBOR map { v: bytes (the value), e: expiresAt epoch ms or null, o: owner hostname }.
//   A value that does not decode to that shape is skipped with a warning naming the key (never an exception out
//   of list or watch); create() treats such a key as taken rather than overwrite what it cannot read.
//
// Expiry by recorded time (the server knows nothing of it)
//   Every reader treats e <= now as absent. create() over an expired record replaces it with a compare-and-set
//   put on the expired record's revision. Expired records are cleaned up with compare-and-set deletes by whoever
//   sees them (get/list/update/watch), so a renewal that raced the cleanup wins or loses cleanly.
//   Revisions are stream sequence numbers. update/delete are CAS on them (Nats-Expected-Last-Subject-Sequence).
//
// Watch
//   An ordered push consumer on the prefix's subject filter, starting at afterRevision + 1. PUT -> put,
//   DEL/PURGE -> delete. 2.9 sends nothing when a record expires, so the watcher tracks the expiry of every key
//   (seeded from a snapshot of the prefix when it starts) and emits "delete" itself when one passes, then tries a
//   CAS delete; the server's DEL marker that follows is not reported twice. On reconnect (or if the consumer
//   ends) the watch re-creates the consumer from the last revision seen + 1. If that revision is no longer in the
//   stream (purged, or the bucket was re-created), it yields { type: "relist" } and continues from the stream's
//   current end.

import { readFileSync } from "node:fs";
import { hostname } from "node:os";
// Not the package root: its entry loads the cbor-extract native addon, which corrupts decoding and crashes Bun
// 1.4.5 (abort / "string.slice is not a function"). decode-no-eval is a self-contained pure-JS decoder.
import { Encoder } from "cbor-x/encode";
import { Decoder } from "cbor-x/decode-no-eval";
import { consola } from "consola";
import { connect, credsAuthenticator, type ConnectionOptions, type NatsConnection } from "@nats-io/transport-node";
import {
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from "@nats-io/jetstream";
import { Kvm, type KV as NatsKV } from "@nats-io/kv";
import {
  StoreUnavailableError,
  type KV,
  type ListResult,
  type Revision,
  type Store,
  type WatchEvent,
  type WriteOptions,
} from "../src/store.ts";
import { sleep } from "../src/sleep.ts";

const log = consola.withTag("nats");

/** A hint for a failed connect that looks like a TLS set-up problem, or "". */
function tlsHint(msg: string, opts: NatsStoreOptions): string {
  if (/certificate|self[- ]signed|unable to verify|UNABLE_TO|CERT_/i.test(msg)) {
    return " (TLS: check that --nats-cafile is the CA that signed the server's certificate and that the certificate names this address)";
  }
  // nats.js does not report a connection the server closes during the TLS/CONNECT exchange (as a 2.9 server with
  // `verify` does to a client without a certificate): the first connect only times out.
  if (/timeout/i.test(msg) && opts.cafile !== undefined && opts.certfile === undefined) {
    return " (if the server requires TLS client certificates (verify), give --nats-certfile and --nats-keyfile)";
  }
  return "";
}

export interface NatsStoreOptions {
  /** nats://host:port URLs (tls:// for TLS). */
  servers: string[];
  /** KV bucket name (default "flannel"). */
  bucket?: string;
  user?: string;
  password?: string;
  token?: string;
  /** A NATS .creds file (JWT + NKey seed). */
  credsFile?: string;
  /** CA that signed the server's certificate (PEM). Any of the three TLS files makes the client insist on TLS. */
  cafile?: string;
  /** Client certificate and key (PEM), both or neither, for servers that verify clients. */
  certfile?: string;
  keyfile?: string;
  /** Timeout of the first connection (default 5000 ms). */
  connectTimeoutMs?: number;
  /** Written as the record's owner "o" (default: this host's name). For operators reading the bucket. */
  owner?: string;
}

const DEFAULT_BUCKET = "flannel";
const BUCKET_HISTORY = 5;
const SNAPSHOT_TIMEOUT_MS = 10_000;
const WATCH_RETRY_MIN_MS = 100;
const WATCH_RETRY_MAX_MS = 5_000;
/** Longest single timer; setTimeout overflows past 2^31 ms, and re-arming now and then is harmless. */
const MAX_TIMER_MS = 60 * 60 * 1000;

// ---------------------------------------------------------------------------------------------------------------
// Key scheme

const LITERAL_RE = /^[a-zA-Z0-9-]$/;
const textEncoder = new TextEncoder();

function encodePart(part: string, key: string): string {
  if (part === "") throw new Error(`NATS store: key ${JSON.stringify(key)} has an empty path segment or part`);
  let out = "";
  for (const ch of part) {
    if (LITERAL_RE.test(ch)) out += ch;
    else if (ch === ".") out += "_";
    else if (ch === ":") out += "=";
    else for (const b of textEncoder.encode(ch)) out += `/${b.toString(16).padStart(2, "0")}`;
  }
  return out;
}

/** Logical key ("subnets/10.5.52.0-24") -> NATS KV key ("subnets.10_5_52_0-24"). Throws on an unusable key. */
export function encodeNatsKey(key: string): string {
  return key
    .split("/")
    .map((seg) => encodePart(seg, key))
    .join(".");
}

function decodeToken(tok: string): string | null {
  const bytes: number[] = [];
  for (let i = 0; i < tok.length; i++) {
    const ch = tok[i]!;
    if (ch === "_") bytes.push(0x2e);
    else if (ch === "=") bytes.push(0x3a);
    else if (ch === "/") {
      const hex = tok.slice(i + 1, i + 3);
      if (!/^[0-9a-f]{2}$/.test(hex)) return null;
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else if (LITERAL_RE.test(ch)) bytes.push(ch.charCodeAt(0));
    else return null;
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array(bytes));
  } catch {
    return null;
  }
}

/** NATS KV key -> logical key, or null if it is not the exact encoding of any logical key. */
export function decodeNatsKey(natsKey: string): string | null {
  const tokens = natsKey.split(".");
  const parts: string[] = [];
  for (const tok of tokens) {
    const part = decodeToken(tok);
    if (part === null || part === "") return null;
    parts.push(part);
  }
  const out = parts.join("/");
  // Only canonical encodings decode, so that decode(encode(k)) == k and encode(decode(n)) == n.
  try {
    return encodeNatsKey(out) === natsKey ? out : null;
  } catch {
    return null;
  }
}

/** The subject filter (relative to the bucket) covering every key under a logical prefix; callers still check startsWith. */
export function natsPrefixFilter(prefix: string): string {
  const cut = prefix.lastIndexOf("/");
  return cut < 0 ? ">" : `${encodeNatsKey(prefix.slice(0, cut))}.>`;
}

// ---------------------------------------------------------------------------------------------------------------
// Records

interface Rec {
  v: Uint8Array;
  e: number | null;
  o?: string;
}

const cborEncoder = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false, variableMapSize: true });
const cborDecoder = new Decoder({ useRecords: false, mapsAsObjects: true });

function encodeRecord(value: Uint8Array, opts: WriteOptions | undefined, owner: string): Uint8Array {
  if (!(value instanceof Uint8Array)) throw new Error("NATS store: value must be a Uint8Array");
  let e: number | null = null;
  if (opts?.ttlMs !== undefined) {
    if (!Number.isFinite(opts.ttlMs) || opts.ttlMs <= 0) throw new Error(`NATS store: ttlMs must be a positive number, got ${opts.ttlMs}`);
    e = Date.now() + Math.ceil(opts.ttlMs);
  }
  // Copy: the encoder reuses its buffer, and the write is async.
  return new Uint8Array(cborEncoder.encode({ v: value, e, o: owner }));
}

/** The record, or a description of what is wrong with it. */
function decodeRecord(data: Uint8Array): Rec | string {
  let x: unknown;
  try {
    x = cborDecoder.decode(data);
  } catch (err) {
    return `not CBOR (${(err as Error).message})`;
  }
  if (typeof x !== "object" || x === null || Array.isArray(x) || x instanceof Uint8Array) return "not a CBOR map";
  const r = x as Record<string, unknown>;
  if (!(r.v instanceof Uint8Array)) return `field "v" is not a byte string`;
  if (r.e !== null && !(typeof r.e === "number" && Number.isFinite(r.e) && r.e >= 0)) return `field "e" is neither null nor a time`;
  if (r.o !== undefined && typeof r.o !== "string") return `field "o" is not a string`;
  // Copy: cbor-x may hand out a Buffer view of the message.
  return { v: new Uint8Array(r.v), e: r.e as number | null, o: r.o as string | undefined };
}

const isExpired = (rec: Rec, now = Date.now()) => rec.e !== null && rec.e <= now;

function isWrongLastSequence(err: unknown): boolean {
  return (
    err instanceof JetStreamApiError &&
    (err.code === JetStreamApiCodes.StreamWrongLastSequence || err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
  );
}

/** One raw bucket entry as read from the stream. rec is null when the value could not be decoded. */
interface RawEntry {
  key: string;
  revision: number;
  op: "PUT" | "DEL" | "PURGE";
  rec: Rec | null;
}

// ---------------------------------------------------------------------------------------------------------------
// The store

export class NatsStore implements Store {
  readonly kind = "nats";
  readonly location: string;
  readonly bucket: string;
  private readonly stream: string;
  private readonly subjectPrefix: string;
  private readonly cleanups = new Set<Promise<unknown>>();
  /** Aborted by close(): ends every running watch. */
  private readonly closing = new AbortController();
  private closed = false;

  private constructor(
    private readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly kv: NatsKV,
    bucket: string,
    location: string,
    private readonly owner: string,
  ) {
    this.bucket = bucket;
    this.location = location;
    this.stream = `KV_${bucket}`;
    this.subjectPrefix = `$KV.${bucket}.`;
  }

  static async connect(opts: NatsStoreOptions): Promise<NatsStore> {
    const servers = opts.servers.map((s) => s.trim()).filter((s) => s !== "");
    if (servers.length === 0) throw new Error("NATS store: no server URL given");
    const location = servers.join(",");
    const bucket = opts.bucket ?? DEFAULT_BUCKET;
    if (!/^[-\w]+$/.test(bucket)) throw new Error(`NATS store: bad bucket name ${JSON.stringify(bucket)} (letters, digits, "-", "_")`);
    if ((opts.user === undefined) !== (opts.password === undefined)) throw new Error("NATS store: user and password go together");

    const co: ConnectionOptions = {
      servers,
      name: `flannel-bin@${hostname()}`,
      timeout: opts.connectTimeoutMs ?? 5000,
      maxReconnectAttempts: -1, // reconnect forever; watchers resume on their own
      reconnectTimeWait: 500, // plus the client's default jitter, so a fleet does not reconnect in step
      pingInterval: 10_000,
    };
    if (opts.user !== undefined) {
      co.user = opts.user;
      co.pass = opts.password;
    }
    if (opts.token !== undefined) co.token = opts.token;
    if (opts.credsFile !== undefined) {
      let creds: Uint8Array;
      try {
        creds = readFileSync(opts.credsFile);
      } catch (err) {
        throw new Error(`NATS store: cannot read creds file ${opts.credsFile}: ${(err as Error).message}`);
      }
      co.authenticator = credsAuthenticator(creds);
    }
    if ((opts.certfile === undefined) !== (opts.keyfile === undefined)) {
      throw new Error("NATS TLS needs both --nats-certfile and --nats-keyfile (only one was given)");
    }
    if (opts.cafile !== undefined || opts.certfile !== undefined || opts.keyfile !== undefined) {
      // Checked here so a bad path names its flag; the client itself re-reads the files on every (re)connect.
      for (const [flag, path] of [
        ["--nats-cafile", opts.cafile],
        ["--nats-certfile", opts.certfile],
        ["--nats-keyfile", opts.keyfile],
      ] as const) {
        if (path === undefined) continue;
        try {
          readFileSync(path);
        } catch (err) {
          throw new Error(`NATS store: cannot read ${flag} ${path}: ${(err as Error).message}`);
        }
      }
      co.tls = { caFile: opts.cafile, certFile: opts.certfile, keyFile: opts.keyfile };
    }

    let nc: NatsConnection;
    try {
      nc = await connect(co);
    } catch (err) {
      const msg = (err as Error).message ?? String(err);
      if (/authori[sz]ation|authentication|permissions/i.test(msg) || (err as Error).name === "AuthorizationError") {
        throw new Error(`NATS ${location}: authorization failed (${msg}); check the user/password, token or creds file`, { cause: err });
      }
      throw new StoreUnavailableError(`NATS ${location}: cannot connect: ${msg}${tlsHint(msg, opts)}`, { cause: err });
    }

    try {
      const jsm = await jetstreamManager(nc);
      const js = jetstream(nc);
      const kvm = new Kvm(js);
      let kv: NatsKV;
      let exists = true;
      try {
        await jsm.streams.info(`KV_${bucket}`);
      } catch (err) {
        if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound)) throw err;
        exists = false;
      }
      if (exists) {
        kv = await kvm.open(bucket);
      } else {
        log.info(`creating KV bucket ${bucket} on ${location}`);
        try {
          kv = await kvm.create(bucket, { history: BUCKET_HISTORY });
        } catch (err) {
          // Another node created it between our check and our create (with its own settings): use theirs.
          await jsm.streams.info(`KV_${bucket}`).catch(() => Promise.reject(err));
          kv = await kvm.open(bucket);
        }
      }
      return new NatsStore(nc, js, jsm, kv, bucket, location, opts.owner ?? hostname());
    } catch (err) {
      await nc.close().catch(() => {});
      const msg = (err as Error).message ?? String(err);
      throw new StoreUnavailableError(`NATS ${location}: cannot open KV bucket ${bucket} (is JetStream enabled?): ${msg}`, { cause: err });
    }
  }

  // -- reads ---------------------------------------------------------------------------------------------------

  /** The current entry of a key, null when absent or deleted; rec null when undecodable (warned). */
  private async readEntry(key: string, natsKey: string): Promise<{ revision: number; rec: Rec | null } | null> {
    const e = await this.guard(`get ${key}`, () => this.kv.get(natsKey));
    if (e === null || e.operation !== "PUT") return null;
    const rec = decodeRecord(e.value);
    if (typeof rec === "string") {
      log.warn(`NATS bucket ${this.bucket}: skipping key ${key} (${natsKey}) at revision ${e.revision}: ${rec}`);
      return { revision: e.revision, rec: null };
    }
    return { revision: e.revision, rec };
  }

  async get(key: string): Promise<KV | null> {
    const natsKey = encodeNatsKey(key);
    const cur = await this.readEntry(key, natsKey);
    if (cur === null || cur.rec === null) return null;
    if (isExpired(cur.rec)) {
      this.cleanupExpired(key, cur.revision);
      return null;
    }
    return { key, value: cur.rec.v, revision: cur.revision, expiresAt: cur.rec.e };
  }

  async list(prefix: string): Promise<ListResult> {
    const { entries, revision } = await this.snapshot(natsPrefixFilter(prefix));
    const now = Date.now();
    const items: KV[] = [];
    for (const e of entries) {
      if (e.op !== "PUT" || e.rec === null || !e.key.startsWith(prefix)) continue;
      if (isExpired(e.rec, now)) {
        this.cleanupExpired(e.key, e.revision);
        continue;
      }
      items.push({ key: e.key, value: e.rec.v, revision: e.revision, expiresAt: e.rec.e });
    }
    items.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    return { items, revision };
  }

  /**
   * The last entry of every key matching a subject filter (deletion markers included), and a revision such that
   * nothing matching the filter was written between it and the snapshot: a watch from revision + 1 misses nothing.
   */
  private async snapshot(filter: string): Promise<{ entries: RawEntry[]; revision: number }> {
    return this.guard(`list ${filter}`, async () => {
      const before = (await this.jsm.streams.info(this.stream)).state.last_seq;
      const oc = await this.js.consumers.getPushConsumer(this.stream, {
        filter_subjects: this.subjectPrefix + filter,
        deliver_policy: DeliverPolicy.LastPerSubject,
      });
      const msgs: JsMsg[] = [];
      try {
        const info = await oc.info(true);
        if (info.num_pending > 0) {
          let iter: Awaited<ReturnType<typeof oc.consume>> | undefined;
          try {
            await new Promise<void>((resolve, reject) => {
              const timer = setTimeout(
                () =>
                  reject(new StoreUnavailableError(`NATS ${this.location}: listing ${filter} timed out after ${SNAPSHOT_TIMEOUT_MS} ms`)),
                SNAPSHOT_TIMEOUT_MS,
              );
              oc.consume({
                callback: (m) => {
                  msgs.push(m);
                  // pending counts what is still to come, including writes that land while we read.
                  if (m.info.pending === 0) {
                    clearTimeout(timer);
                    resolve();
                  }
                },
              }).then((it) => {
                iter = it;
                void it.closed().then(() => {
                  clearTimeout(timer);
                  reject(new StoreUnavailableError(`NATS ${this.location}: listing ${filter} was interrupted`));
                });
              }, reject);
            });
          } finally {
            iter?.stop();
          }
        }
      } finally {
        await oc.delete().catch(() => {});
      }
      // Writes that land while we read add later messages for keys already seen: the newest per key wins, so an
      // old PUT never stands beside the DEL that followed it.
      let revision = before;
      const latest = new Map<string, RawEntry>();
      for (const m of msgs) {
        revision = Math.max(revision, m.seq);
        const e = this.toRawEntry(m);
        const seen = e && latest.get(e.key);
        if (e && (!seen || seen.revision < e.revision)) latest.set(e.key, e);
      }
      return { entries: [...latest.values()], revision };
    });
  }

  /** Decodes a stream message; null (warned) when its key is not one of ours. */
  private toRawEntry(m: JsMsg): RawEntry | null {
    const natsKey = m.subject.startsWith(this.subjectPrefix) ? m.subject.slice(this.subjectPrefix.length) : m.subject;
    const key = decodeNatsKey(natsKey);
    if (key === null) {
      log.warn(`NATS bucket ${this.bucket}: skipping key ${natsKey}: not a key this store writes`);
      return null;
    }
    const hop = m.headers?.get("KV-Operation") ?? "";
    const op = hop === "DEL" || hop === "PURGE" ? hop : "PUT";
    if (op !== "PUT") return { key, revision: m.seq, op, rec: null };
    const rec = decodeRecord(m.data);
    if (typeof rec === "string") {
      log.warn(`NATS bucket ${this.bucket}: skipping key ${key} (${natsKey}) at revision ${m.seq}: ${rec}`);
      return { key, revision: m.seq, op, rec: null };
    }
    return { key, revision: m.seq, op, rec };
  }

  // -- writes --------------------------------------------------------------------------------------------------

  async create(key: string, value: Uint8Array, opts?: WriteOptions): Promise<Revision | null> {
    const natsKey = encodeNatsKey(key);
    const data = encodeRecord(value, opts, this.owner);
    // kv.create succeeds on an absent key and on one whose last entry is a DEL/PURGE marker.
    const first = await this.casWrite(`create ${key}`, () => this.kv.create(natsKey, data));
    if (first !== null) return first;
    const cur = await this.readEntry(key, natsKey);
    if (cur === null) return this.casWrite(`create ${key}`, () => this.kv.create(natsKey, data)); // deleted meanwhile
    if (cur.rec === null || !isExpired(cur.rec)) return null;
    // Expired: replace it in one compare-and-set write on its revision (a renewal racing us makes this fail).
    return this.casWrite(`create ${key}`, () => this.kv.update(natsKey, data, cur.revision));
  }

  async update(key: string, value: Uint8Array, revision: Revision, opts?: WriteOptions): Promise<Revision | null> {
    const natsKey = encodeNatsKey(key);
    const data = encodeRecord(value, opts, this.owner);
    if (!Number.isSafeInteger(revision) || revision <= 0) return null;
    const cur = await this.readEntry(key, natsKey);
    if (cur === null || cur.revision !== revision || cur.rec === null) return null;
    if (isExpired(cur.rec)) {
      this.cleanupExpired(key, cur.revision);
      return null;
    }
    return this.casWrite(`update ${key}`, () => this.kv.update(natsKey, data, revision));
  }

  async delete(key: string, revision: Revision): Promise<boolean> {
    const natsKey = encodeNatsKey(key);
    if (!Number.isSafeInteger(revision) || revision <= 0) return false;
    const cur = await this.readEntry(key, natsKey);
    if (cur === null || cur.revision !== revision) return false;
    const deleted = await this.casDelete(key, natsKey, revision);
    // An expired record was already absent: the delete only cleaned it up.
    return deleted && (cur.rec === null || !isExpired(cur.rec));
  }

  private async casDelete(key: string, natsKey: string, revision: number): Promise<boolean> {
    const r = await this.casWrite(`delete ${key}`, async () => {
      await this.kv.delete(natsKey, { previousSeq: revision });
      return 1;
    });
    return r !== null;
  }

  /** Runs a conditional write: its result, or null when the expected revision did not match. */
  private async casWrite(what: string, fn: () => Promise<number>): Promise<number | null> {
    try {
      return await this.guard(what, fn);
    } catch (err) {
      if (isWrongLastSequence((err as { cause?: unknown }).cause) || isWrongLastSequence(err)) return null;
      throw err;
    }
  }

  /** CAS-deletes an expired record in the background; losing the race (renewed, already deleted) is fine. */
  private cleanupExpired(key: string, revision: number): void {
    if (this.closed) return;
    const p = this.casDelete(key, encodeNatsKey(key), revision)
      .then((ok) => ok && log.debug(`removed expired ${key} (revision ${revision})`))
      .catch((err) => log.debug(`cleanup of expired ${key} failed: ${(err as Error).message}`))
      .finally(() => this.cleanups.delete(p));
    this.cleanups.add(p);
  }

  /** Maps client errors to StoreUnavailableError (retryable, names the server) unless they are API answers. */
  private async guard<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof StoreUnavailableError) throw err;
      const msg = (err as Error).message ?? String(err);
      if (err instanceof JetStreamApiError) throw new Error(`NATS ${this.location}: ${what}: ${msg}`, { cause: err });
      throw new StoreUnavailableError(`NATS ${this.location}: ${what}: ${msg}`, { cause: err });
    }
  }

  // -- watch ---------------------------------------------------------------------------------------------------

  watch(prefix: string, afterRevision: Revision, signal: AbortSignal): AsyncIterable<WatchEvent> {
    return new NatsWatch(this, prefix, afterRevision, AbortSignal.any([signal, this.closing.signal])).run();
  }

  /** @internal for NatsWatch */
  _internals() {
    return {
      nc: this.nc,
      js: this.js,
      jsm: this.jsm,
      stream: this.stream,
      subjectPrefix: this.subjectPrefix,
      location: this.location,
      snapshot: (filter: string) => this.snapshot(filter),
      toRawEntry: (m: JsMsg) => this.toRawEntry(m),
      cleanupExpired: (key: string, revision: number) => this.cleanupExpired(key, revision),
      isClosed: () => this.closed,
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.closing.abort();
    await Promise.allSettled([...this.cleanups]);
    await this.nc.close().catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Watch machinery

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

class NatsWatch {
  private readonly s: ReturnType<NatsStore["_internals"]>;
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
    store: NatsStore,
    private readonly prefix: string,
    afterRevision: Revision,
    private readonly signal: AbortSignal,
  ) {
    this.s = store._internals();
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
      while (!this.signal.aborted && !this.s.isClosed()) {
        if (needStart) {
          try {
            const relist = await this.start(filter, firstStart);
            firstStart = false;
            needStart = false;
            backoff = WATCH_RETRY_MIN_MS;
            if (relist) yield { type: "relist" };
            for (const ev of this.expireDue()) yield ev;
          } catch (err) {
            if (this.signal.aborted || this.s.isClosed()) break;
            log.debug(`watch ${this.prefix}: (re)start failed, retrying in ${backoff} ms: ${(err as Error).message}`);
            await sleep(backoff, this.signal);
            backoff = Math.min(backoff * 2, WATCH_RETRY_MAX_MS);
            continue;
          }
        }
        const item = await this.inbox.next();
        if (item === null) break;
        if (item.kind === "restart" || item.kind === "error") {
          if (item.kind === "error") log.debug(`watch ${this.prefix}: consumer ended: ${(item.err as Error)?.message ?? item.err}`);
          needStart = true;
          continue;
        }
        if (item.kind === "msg") for (const ev of this.onMessage(item.msg)) yield ev;
        else for (const ev of this.expireDue()) yield ev; // the expiry timer fired: the one full scan
      }
    } finally {
      this.stopConsumer?.();
      if (this.timer) clearTimeout(this.timer);
      statusLoop.stop();
    }
  }

  /** Restarts the consumer when the client reconnects: the server may have lost our ephemeral consumer. */
  private watchConnection(): { stop(): void } {
    let stopped = false;
    const it = this.s.nc.status()[Symbol.asyncIterator]();
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
   * seeded from a snapshot of the prefix, so keys written before the watch started still expire here.
   */
  private async start(filter: string, first: boolean): Promise<boolean> {
    this.stopConsumer?.();
    this.stopConsumer = null;
    this.inbox.clear();
    const gen = ++this.generation;
    const state = (await this.s.jsm.streams.info(this.s.stream)).state;
    const from = this.lastRev + 1;
    // A gap: [from, first_seq) was removed (purge, limits), or the stream is younger than our revision (re-created).
    // (An emptied stream reports first_seq = last_seq + 1; a never-used one 0.)
    const lost = this.lastRev > state.last_seq || from < state.first_seq;
    if (lost) {
      log.warn(
        `watch ${this.prefix} on NATS ${this.s.location}: revision ${from} is no longer in ${this.s.stream} (first ${state.first_seq}, last ${state.last_seq}); relisting`,
      );
      this.lastRev = state.last_seq;
    }
    if (first || lost) {
      const snap = await this.s.snapshot(filter);
      this.live.clear();
      this.expired.clear();
      for (const e of snap.entries) {
        if (e.op === "PUT" && e.rec !== null && e.key.startsWith(this.prefix))
          this.live.set(e.key, { revision: e.revision, expiresAt: e.rec.e });
      }
      if (lost) this.lastRev = Math.max(this.lastRev, snap.revision);
    }
    const oc = await this.s.js.consumers.getPushConsumer(this.s.stream, {
      filter_subjects: this.s.subjectPrefix + filter,
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
    const e = this.s.toRawEntry(m);
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
    if (isExpired(e.rec)) {
      if (known && known.revision > e.revision) return; // superseded by a newer record we already know of
      this.live.delete(e.key);
      if (!this.expired.has(e.key)) {
        this.expired.set(e.key, e.revision);
        yield { type: "delete", key: e.key, revision: e.revision };
      }
      this.s.cleanupExpired(e.key, e.revision);
      return;
    }
    this.expired.delete(e.key);
    if (!known || known.revision <= e.revision) this.live.set(e.key, { revision: e.revision, expiresAt: e.rec.e });
    // A new record can only bring the timer forward: no scan of every key per message (a backlog replay is O(N)).
    if (e.rec.e !== null && (this.timer === null || e.rec.e < this.timerAt)) this.armAt(e.rec.e);
    yield { type: "put", kv: { key: e.key, value: e.rec.v, revision: e.revision, expiresAt: e.rec.e } };
  }

  /** Synthesised deletes for every tracked key whose recorded expiry has passed (2.9 sends none). */
  private *expireDue(): Generator<WatchEvent> {
    const now = Date.now();
    for (const [key, k] of this.live) {
      if (k.expiresAt === null || k.expiresAt > now) continue;
      this.live.delete(key);
      this.expired.set(key, k.revision);
      this.s.cleanupExpired(key, k.revision);
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
    if (at === Infinity || this.signal.aborted) return;
    this.timerAt = at;
    const delay = Math.min(Math.max(0, at - Date.now()) + 1, MAX_TIMER_MS);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.inbox.push({ kind: "timer" });
    }, delay);
  }
}
