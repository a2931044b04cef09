// The etcd store: flannel's key layout and lease semantics over etcd's v3 JSON gateway (/v3/...), with fetch only.
//
// Layout (docs/flannel-compat.md §2): logical "config" -> "<prefix>/config", "subnets/10.5.52.0-24" ->
// "<prefix>/subnets/10.5.52.0-24". A record with a ttl is attached to its own etcd lease (etcd deletes the key
// when the lease runs out); a record without one has no lease (a reservation, as flannel's docs write them).
//
// Differences from flanneld, on purpose: renewal is a compare-and-set txn on mod_revision (flannel's blind put is
// how two hosts ended up sharing a subnet), and the lease a renewal replaces is revoked once no key uses it.
//
// Gateway details: keys/values are base64, int64 fields are JSON strings (lease IDs exceed 2^53: kept as strings),
// proto3 JSON omits defaults (failed txn: no `succeeded`; PUT watch event: no `type`; empty range: no `kvs`).

import { readFile } from "node:fs/promises";
import { consola } from "consola";
import {
  type KV,
  type ListResult,
  type Revision,
  type Store,
  StoreUnavailableError,
  type WatchEvent,
  type WriteOptions,
} from "../src/store.ts";
import { sleep } from "../src/sleep.ts";

const log = consola.withTag("etcd");

export interface EtcdStoreOptions {
  endpoints: string[];
  /** e.g. "/coreos.com/network"; a trailing slash is harmless. */
  prefix: string;
  cafile?: string;
  certfile?: string;
  keyfile?: string;
  username?: string;
  password?: string;
  /** Bound on each unary request (default 5000 ms). */
  requestTimeoutMs?: number;
}

/** An answer from etcd that is an error (not an unreachable endpoint): bad request, auth refused, etc. */
export class EtcdError extends Error {
  constructor(
    message: string,
    readonly code?: number,
  ) {
    super(message);
    this.name = "EtcdError";
  }
}

type Json = Record<string, unknown>;

interface RawKV {
  key: string;
  value: Uint8Array;
  revision: Revision;
  /** Decimal lease ID; "0" = no lease. */
  lease: string;
}

/** Expiry of a lease: epoch ms, null = no lease, "expired" = the lease is gone (its keys are being deleted). */
type LeaseExpiry = number | null | "expired";

const WATCH_BACKOFF_MIN_MS = 100;
const WATCH_BACKOFF_MAX_MS = 5000;
const TTL_LOOKUP_CONCURRENCY = 16;
const LEASE_CACHE_MAX = 4096;

let warnedInsecure = false;

const enc = new TextEncoder();
const utf8 = new TextDecoder("utf-8", { fatal: true });

const b64 = (b: Uint8Array | string): string => Buffer.from(typeof b === "string" ? enc.encode(b) : b).toString("base64");
const B64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict base64 decode (Buffer.from silently skips junk); throws on anything that is not base64. */
function unb64(s: unknown, what: string): Uint8Array {
  if (s === undefined) return new Uint8Array(0); // proto3: empty bytes are omitted
  if (typeof s !== "string" || !B64_RE.test(s)) throw new Error(`${what} is not base64`);
  return new Uint8Array(Buffer.from(s, "base64"));
}

/** proto3 int64 as JSON: a decimal string, absent = 0. Must fit a JS number exactly. */
function int64(v: unknown, what: string): number {
  if (v === undefined) return 0;
  const s = typeof v === "number" ? String(v) : v;
  if (typeof s !== "string" || !/^-?\d{1,19}$/.test(s)) throw new Error(`${what} is not an int64: ${JSON.stringify(v)}`);
  const n = Number(s);
  if (!Number.isSafeInteger(n)) throw new Error(`${what} is out of range: ${s}`);
  return n;
}

/** A lease ID kept as its decimal string (they do not fit a double). */
function leaseId(v: unknown): string {
  if (v === undefined) return "0";
  const s = typeof v === "number" ? String(v) : v;
  if (typeof s !== "string" || !/^-?\d{1,20}$/.test(s)) throw new Error(`lease ID is not an int64: ${JSON.stringify(v)}`);
  return s.replace(/^(-?)0+(?=\d)/, "$1");
}

/** etcd's prefix range end: the key with its last byte incremented (trailing 0xff bytes dropped). */
function prefixEnd(key: Uint8Array): Uint8Array {
  const end = key.slice();
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i] = end[i]! + 1;
      return end.slice(0, i + 1);
    }
  }
  return new Uint8Array([0]); // all 0xff: the whole keyspace from key on
}

/** An error's message, with Bun's error code (ECONNREFUSED, ...) in front when the message does not already say it. */
const errorMessage = (e: unknown): string => {
  if (!(e instanceof Error)) return String(e);
  const code = (e as { code?: unknown }).code;
  return typeof code === "string" && !e.message.includes(code) ? `${code}: ${e.message}` : e.message;
};

async function mapLimit<T, R>(items: T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

const isAuthTokenError = (msg: string): boolean => /invalid auth token|user name is empty|auth token is not provided/i.test(msg);

export class EtcdStore implements Store {
  readonly kind = "etcd";
  readonly location: string;

  private current = 0;
  private token: { endpoint: string; token: string } | null = null;
  private readonly closeCtl = new AbortController();
  private readonly root: string;

  private constructor(
    private readonly endpoints: string[],
    prefix: string,
    private readonly tls: { ca?: string; cert?: string; key?: string } | undefined,
    private readonly auth: { username: string; password: string } | undefined,
    private readonly requestTimeoutMs: number,
  ) {
    this.location = endpoints.join(",");
    // Path-join: "/coreos.com/network/" and "/coreos.com/network" are the same prefix.
    this.root = prefix.replace(/\/+$/, "");
  }

  /** Validates the options and reads the TLS files. Does not contact etcd: an unreachable etcd shows on first use. */
  static async connect(opts: EtcdStoreOptions): Promise<EtcdStore> {
    const endpoints = opts.endpoints.map((e) => e.replace(/\/+$/, ""));
    if (endpoints.length === 0) throw new Error("no etcd endpoints given (--etcd-endpoints)");
    for (const e of endpoints) {
      let u: URL;
      try {
        u = new URL(e);
      } catch {
        throw new Error(`etcd endpoint is not an http:// or https:// URL: ${JSON.stringify(e)}`);
      }
      if (u.protocol !== "http:" && u.protocol !== "https:")
        throw new Error(`etcd endpoint is not an http:// or https:// URL: ${JSON.stringify(e)}`);
    }
    if (typeof opts.prefix !== "string") throw new Error("etcd prefix must be a string");
    if (!!opts.certfile !== !!opts.keyfile) {
      throw new Error("etcd TLS needs both --etcd-certfile and --etcd-keyfile (only one was given)");
    }
    let tls: { ca?: string; cert?: string; key?: string } | undefined;
    const readPem = async (path: string, flag: string): Promise<string> => {
      try {
        return await readFile(path, "utf8");
      } catch (e) {
        throw new Error(`cannot read ${flag} ${path}: ${errorMessage(e)}`);
      }
    };
    if (opts.certfile && opts.keyfile) {
      tls = { cert: await readPem(opts.certfile, "--etcd-certfile"), key: await readPem(opts.keyfile, "--etcd-keyfile") };
    }
    if (opts.cafile) tls = { ...tls, ca: await readPem(opts.cafile, "--etcd-cafile") };
    if (!tls?.cert && !warnedInsecure && endpoints.some((e) => e.startsWith("http:"))) {
      warnedInsecure = true;
      log.warn("no certificate provided: connecting to etcd with http. This is insecure");
    }
    if (!!opts.username !== !!opts.password && opts.username) {
      // etcd allows an empty password only for users created with --no-password; say so rather than fail obscurely.
      log.warn(`etcd user ${opts.username} given without a password`);
    }
    const auth = opts.username ? { username: opts.username, password: opts.password ?? "" } : undefined;
    const timeout = opts.requestTimeoutMs ?? 5000;
    if (!(timeout > 0)) throw new Error(`etcd request timeout must be positive: ${timeout}`);
    return new EtcdStore(endpoints, opts.prefix, tls, auth, timeout);
  }

  // ---- key mapping ----

  private etcdKey(logical: string): string {
    return `${this.root}/${logical}`;
  }

  /** The logical key of an etcd key, or null if it is not under our prefix. */
  private logicalKey(etcdKey: string): string | null {
    const p = `${this.root}/`;
    return etcdKey.startsWith(p) ? etcdKey.slice(p.length) : null;
  }

  // ---- transport ----

  private checkOpen(): void {
    if (this.closeCtl.signal.aborted) throw new Error("etcd store is closed");
  }

  private fetchInit(body: unknown, headers: Record<string, string>, signal: AbortSignal): RequestInit {
    const init: RequestInit & { tls?: unknown } = {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(body),
      signal,
    };
    if (this.tls) init.tls = this.tls;
    return init;
  }

  /** Authorization header for `endpoint` (simple tokens are per member, so a new endpoint authenticates anew). */
  private async authHeaders(endpoint: string, signal: AbortSignal): Promise<Record<string, string>> {
    if (!this.auth) return {};
    if (this.token?.endpoint === endpoint) return { authorization: this.token.token };
    const res = await fetch(
      `${endpoint}/v3/auth/authenticate`,
      this.fetchInit({ name: this.auth.username, password: this.auth.password }, {}, signal),
    );
    const j = await readJson(res);
    if (!res.ok)
      throw new EtcdError(`etcd authentication as ${this.auth.username} at ${endpoint} failed: ${gatewayError(j, res.status)}`, res.status);
    if (typeof j.token !== "string" || j.token === "") throw new EtcdError(`etcd at ${endpoint} returned no auth token`);
    this.token = { endpoint, token: j.token };
    return { authorization: j.token };
  }

  /**
   * A unary gateway call with failover: each endpoint in turn from the last good one; connection errors,
   * timeouts and "unavailable" answers move on to the next. All failing => StoreUnavailableError naming each.
   */
  private async call(path: string, body: unknown): Promise<Json> {
    this.checkOpen();
    const failures: string[] = [];
    const n = this.endpoints.length;
    for (let k = 0; k < n; k++) {
      const i = (this.current + k) % n;
      const ep = this.endpoints[i]!;
      for (let authTry = 0; authTry < 2; authTry++) {
        const signal = AbortSignal.any([this.closeCtl.signal, AbortSignal.timeout(this.requestTimeoutMs)]);
        let res: Response;
        let j: Json;
        try {
          const headers = await this.authHeaders(ep, signal);
          res = await fetch(ep + path, this.fetchInit(body, headers, signal));
          j = await readJson(res);
        } catch (e) {
          if (this.closeCtl.signal.aborted) throw new Error("etcd store is closed");
          if (e instanceof EtcdError) throw e;
          failures.push(
            `${ep} (${(e as Error).name === "TimeoutError" ? `no answer within ${this.requestTimeoutMs} ms` : errorMessage(e)})`,
          );
          break;
        }
        if (res.ok) {
          this.current = i;
          return j;
        }
        const msg = gatewayError(j, res.status);
        if (this.auth && isAuthTokenError(msg) && authTry === 0) {
          this.token = null; // expired or from another member: authenticate again and retry once
          continue;
        }
        if (res.status === 503 || j.code === 14) {
          failures.push(`${ep} (${msg})`);
          break;
        }
        throw new EtcdError(`etcd ${ep}${path}: ${msg}`, typeof j.code === "number" ? j.code : undefined);
      }
    }
    throw new StoreUnavailableError(`etcd unavailable at every endpoint: ${failures.join(", ")}`);
  }

  // ---- records ----

  /** Parses one gateway kv; throws naming the problem (the caller skips it with a warning). */
  private parseKV(kv: unknown): RawKV | null {
    if (!kv || typeof kv !== "object") throw new Error("kv is not an object");
    const o = kv as Json;
    const keyBytes = unb64(o.key, "key");
    let etcdKey: string;
    try {
      etcdKey = utf8.decode(keyBytes);
    } catch {
      throw new Error("key is not UTF-8");
    }
    const key = this.logicalKey(etcdKey);
    if (key === null) return null;
    let value: Uint8Array;
    try {
      value = unb64(o.value, "value");
    } catch (e) {
      throw new Error(`${etcdKey}: ${(e as Error).message}`);
    }
    return { key, value, revision: int64(o.mod_revision, `${etcdKey} mod_revision`), lease: leaseId(o.lease) };
  }

  private parseKVs(kvs: unknown, what: string): RawKV[] {
    if (kvs === undefined) return [];
    if (!Array.isArray(kvs)) throw new EtcdError(`${what}: kvs is not an array`);
    const out: RawKV[] = [];
    for (const kv of kvs) {
      try {
        const r = this.parseKV(kv);
        if (r) out.push(r);
      } catch (e) {
        log.warn(`skipping an unreadable etcd record in ${what}: ${(e as Error).message}`);
      }
    }
    return out;
  }

  private async leaseExpiry(id: string): Promise<LeaseExpiry> {
    if (id === "0") return null;
    const j = await this.call("/v3/lease/timetolive", { ID: id });
    const ttl = int64(j.TTL, "lease TTL");
    // TTL -1: the lease is unknown or expired, so etcd is about to delete its keys.
    return ttl < 0 ? "expired" : Date.now() + ttl * 1000;
  }

  /**
   * Expiry of a lease ID, cached: flannel leases are granted with a fixed TTL and renewed by a new grant, never kept
   * alive, so an ID's expiry does not move. Without the cache every list() costs one TimeToLive call per lease
   * (flanneld's N+1). "expired" is never cached, and a cached time that has passed is asked again.
   */
  private readonly leaseCache = new Map<string, number>();
  private async cachedExpiry(id: string): Promise<LeaseExpiry> {
    if (id === "0") return null;
    const hit = this.leaseCache.get(id);
    if (hit !== undefined && hit > Date.now()) return hit;
    const e = await this.leaseExpiry(id);
    if (this.leaseCache.size >= LEASE_CACHE_MAX) this.leaseCache.clear();
    if (typeof e === "number") this.leaseCache.set(id, e);
    else this.leaseCache.delete(id);
    return e;
  }

  /** Attaches expiresAt, dropping records whose lease has already run out. */
  private async withExpiry(raw: RawKV[]): Promise<KV[]> {
    const ids = [...new Set(raw.map((r) => r.lease).filter((l) => l !== "0"))];
    const exp = new Map<string, LeaseExpiry>();
    const got = await mapLimit(ids, TTL_LOOKUP_CONCURRENCY, (id) => this.cachedExpiry(id));
    for (const [i, id] of ids.entries()) exp.set(id, got[i]!);
    const out: KV[] = [];
    for (const r of raw) {
      const e = r.lease === "0" ? null : exp.get(r.lease)!;
      if (e === "expired") continue;
      out.push({ key: r.key, value: r.value, revision: r.revision, expiresAt: e });
    }
    return out;
  }

  private async grant(ttlMs: number): Promise<string> {
    if (!Number.isFinite(ttlMs) || ttlMs <= 0) throw new Error(`ttlMs must be a positive number: ${ttlMs}`);
    const j = await this.call("/v3/lease/grant", { TTL: String(Math.max(1, Math.ceil(ttlMs / 1000))) });
    if (typeof j.error === "string" && j.error) throw new EtcdError(`etcd lease grant: ${j.error}`);
    const id = leaseId(j.ID);
    if (id === "0") throw new EtcdError("etcd lease grant returned no lease ID");
    return id;
  }

  private async revoke(id: string): Promise<void> {
    this.leaseCache.delete(id);
    try {
      await this.call("/v3/lease/revoke", { ID: id });
    } catch (e) {
      // It expires by itself; nothing is attached to it.
      log.debug(`revoking etcd lease ${id}: ${errorMessage(e)}`);
    }
  }

  /** Revokes a lease a write replaced, but only if no key uses it any more (someone else's lease stays). */
  private tidyLease(id: string | undefined): void {
    if (!id || id === "0" || this.closeCtl.signal.aborted) return;
    void (async () => {
      const j = await this.call("/v3/lease/timetolive", { ID: id, keys: true });
      if (int64(j.TTL, "lease TTL") < 0) return;
      if (Array.isArray(j.keys) && j.keys.length > 0) return;
      await this.call("/v3/lease/revoke", { ID: id });
    })().catch((e) => log.debug(`tidying etcd lease ${id}: ${errorMessage(e)}`));
  }

  // ---- Store ----

  async get(key: string): Promise<KV | null> {
    const j = await this.call("/v3/kv/range", { key: b64(this.etcdKey(key)) });
    const kvs = await this.withExpiry(this.parseKVs(j.kvs, `get ${key}`).filter((r) => r.key === key));
    return kvs[0] ?? null;
  }

  async list(prefix: string): Promise<ListResult> {
    const k = enc.encode(this.etcdKey(prefix));
    const j = await this.call("/v3/kv/range", { key: b64(k), range_end: b64(prefixEnd(k)) });
    const revision = int64((j.header as Json | undefined)?.revision, "header revision");
    const items = await this.withExpiry(this.parseKVs(j.kvs, `list ${prefix}`));
    return { items, revision };
  }

  async create(key: string, value: Uint8Array, opts?: WriteOptions): Promise<Revision | null> {
    this.checkOpen();
    // flanneld's create: If Version(key) == 0 Then Put(key, value, lease).
    const j = await this.putIf(key, value, { target: "VERSION", result: "EQUAL", version: "0" }, opts);
    return j ? int64((j.header as Json | undefined)?.revision, "txn revision") : null;
  }

  async update(key: string, value: Uint8Array, revision: Revision, opts?: WriteOptions): Promise<Revision | null> {
    this.checkOpen();
    if (!Number.isSafeInteger(revision) || revision <= 0) return null; // no key ever has such a revision
    const j = await this.putIf(key, value, { target: "MOD", result: "EQUAL", mod_revision: String(revision) }, opts);
    if (!j) return null;
    this.tidyLease(prevKvLease(j, "response_put"));
    return int64((j.header as Json | undefined)?.revision, "txn revision");
  }

  /**
   * One transaction: if `compare` holds, put the value under a fresh etcd lease (none without ttlMs).
   * Returns the txn response, or null when the compare failed; the fresh lease is revoked unless it was used.
   */
  private async putIf(key: string, value: Uint8Array, compare: Json, opts?: WriteOptions): Promise<Json | null> {
    const lease = opts?.ttlMs !== undefined ? await this.grant(opts.ttlMs) : "0";
    const k = b64(this.etcdKey(key));
    let j: Json;
    try {
      j = await this.call("/v3/kv/txn", {
        compare: [{ key: k, ...compare }],
        success: [{ request_put: { key: k, value: b64(value), lease, prev_kv: true } }],
      });
    } catch (e) {
      if (lease !== "0") await this.revoke(lease);
      throw e;
    }
    if (j.succeeded !== true) {
      if (lease !== "0") await this.revoke(lease);
      return null;
    }
    return j;
  }

  async delete(key: string, revision: Revision): Promise<boolean> {
    this.checkOpen();
    if (!Number.isSafeInteger(revision) || revision <= 0) return false;
    const k = b64(this.etcdKey(key));
    const j = await this.call("/v3/kv/txn", {
      compare: [{ key: k, target: "MOD", result: "EQUAL", mod_revision: String(revision) }],
      success: [{ request_delete_range: { key: k, prev_kv: true } }],
    });
    if (j.succeeded !== true) return false;
    this.tidyLease(prevKvLease(j, "response_delete_range"));
    return true;
  }

  async *watch(prefix: string, afterRevision: Revision, signal: AbortSignal): AsyncIterable<WatchEvent> {
    this.checkOpen();
    const ctl = AbortSignal.any([signal, this.closeCtl.signal]);
    const k = enc.encode(this.etcdKey(prefix));
    const rangeEnd = b64(prefixEnd(k));
    let next = afterRevision + 1;
    let backoff = WATCH_BACKOFF_MIN_MS;
    const expiryOf = (id: string) => this.cachedExpiry(id);

    while (!ctl.aborted) {
      let relist = false;
      try {
        for await (const msg of this.watchStream(b64(k), rangeEnd, next, ctl)) {
          const compactRev = int64(msg.compact_revision, "compact_revision");
          if (compactRev !== 0 || (msg.canceled === true && /compacted/i.test(String(msg.cancel_reason ?? "")))) {
            relist = true;
            break;
          }
          if (msg.canceled === true) throw new Error(`etcd canceled the watch: ${String(msg.cancel_reason ?? "no reason given")}`);
          if (msg.created === true) backoff = WATCH_BACKOFF_MIN_MS;
          const events = msg.events;
          if (events === undefined) continue;
          if (!Array.isArray(events)) throw new Error("watch response events is not an array");
          for (const ev of events as Json[]) {
            const isDelete = ev.type === "DELETE";
            if (ev.type !== undefined && ev.type !== "PUT" && !isDelete)
              throw new Error(`unknown watch event type ${JSON.stringify(ev.type)}`);
            let raw: RawKV | null;
            try {
              raw = this.parseKV(ev.kv);
            } catch (e) {
              // An unreadable record is skipped (not a reason to drop every peer), but the cursor moves past it.
              const rev = (() => {
                try {
                  return int64((ev.kv as Json | undefined)?.mod_revision, "mod_revision");
                } catch {
                  return 0;
                }
              })();
              log.warn(`skipping an unreadable etcd watch event: ${(e as Error).message}`);
              if (rev >= next) next = rev + 1;
              continue;
            }
            if (!raw) continue;
            if (isDelete) {
              yield { type: "delete", key: raw.key, revision: raw.revision };
            } else {
              const exp = await expiryOf(raw.lease);
              // An already-expired lease: etcd is deleting the key; its delete event follows.
              if (exp !== "expired") yield { type: "put", kv: { key: raw.key, value: raw.value, revision: raw.revision, expiresAt: exp } };
            }
            next = raw.revision + 1;
          }
        }
      } catch (e) {
        if (ctl.aborted) return;
        const msg = errorMessage(e);
        if (isAuthTokenError(msg)) this.token = null;
        log.warn(`etcd watch on ${this.etcdKey(prefix)} interrupted (${msg}); resuming at revision ${next} in ${backoff} ms`);
      }
      if (ctl.aborted) return;
      if (relist) {
        // History before our cursor is gone: the consumer re-lists; we continue after the current revision.
        let current: number;
        try {
          current = await this.currentRevision();
        } catch (e) {
          if (ctl.aborted) return;
          log.warn(`etcd watch: cannot read the current revision after compaction (${errorMessage(e)}); retrying in ${backoff} ms`);
          await sleep(backoff, ctl);
          backoff = Math.min(backoff * 2, WATCH_BACKOFF_MAX_MS);
          continue; // the retried watch reports the compaction again
        }
        log.info(`etcd watch on ${this.etcdKey(prefix)}: revision ${next} was compacted; relisting, resuming at ${current + 1}`);
        yield { type: "relist" };
        next = current + 1;
        backoff = WATCH_BACKOFF_MIN_MS;
        continue;
      }
      await sleep(backoff, ctl);
      backoff = Math.min(backoff * 2, WATCH_BACKOFF_MAX_MS);
    }
  }

  private async currentRevision(): Promise<number> {
    const j = await this.call("/v3/kv/range", { key: b64(`${this.root}/`), count_only: true });
    return int64((j.header as Json | undefined)?.revision, "header revision");
  }

  /**
   * Opens /v3/watch on the first endpoint that answers (from the last good one) and yields each `result`.
   * Ends when the server closes the stream; throws on an error line or a broken connection.
   */
  private async *watchStream(key: string, rangeEnd: string, startRevision: number, signal: AbortSignal): AsyncGenerator<Json> {
    const body = { create_request: { key, range_end: rangeEnd, start_revision: String(startRevision) } };
    const failures: string[] = [];
    const n = this.endpoints.length;
    let res: Response | null = null;
    // One controller per endpoint attempt: a connect that times out is aborted on its own and the next endpoint
    // is tried (a black-holed endpoint must not hold the watch). The winning one closes the stream at the end.
    let streamCtl = new AbortController();
    const onAbort = () => streamCtl.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      for (let kk = 0; kk < n && !res && !signal.aborted; kk++) {
        const i = (this.current + kk) % n;
        const ep = this.endpoints[i]!;
        const ctl = (streamCtl = new AbortController());
        // Bound the connect (until headers arrive); the stream itself stays open.
        const timer = setTimeout(() => ctl.abort(new DOMException("connect timeout", "TimeoutError")), this.requestTimeoutMs);
        try {
          const headers = await this.authHeaders(ep, ctl.signal);
          const r = await fetch(`${ep}/v3/watch`, this.fetchInit(body, headers, ctl.signal));
          if (!r.ok) {
            const j = await readJson(r).catch(() => ({}) as Json);
            const msg = gatewayError(j, r.status);
            if (isAuthTokenError(msg)) this.token = null;
            failures.push(`${ep} (${msg})`);
            continue;
          }
          res = r;
          this.current = i;
        } catch (e) {
          if (signal.aborted) return;
          if (e instanceof EtcdError) throw e;
          failures.push(`${ep} (${errorMessage(e)})`);
        } finally {
          clearTimeout(timer);
        }
      }
      if (!res?.body) throw new StoreUnavailableError(`etcd watch unavailable at every endpoint: ${failures.join(", ")}`);

      const dec = new TextDecoder();
      let buf = "";
      const parseLine = (line: string): Json | null => {
        if (line.trim() === "") return null;
        const j = JSON.parse(line) as Json;
        if (j.error !== undefined) {
          const err = j.error as Json;
          throw new Error(`etcd watch error: ${typeof err === "object" && err ? String(err.message ?? JSON.stringify(err)) : String(err)}`);
        }
        if (!j.result || typeof j.result !== "object") throw new Error("watch response without result");
        return j.result as Json;
      };
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf += dec.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          const r = parseLine(line);
          if (r) yield r;
        }
      }
      const r = parseLine(buf + dec.decode()); // the last line may come without a newline
      if (r) yield r;
    } finally {
      signal.removeEventListener("abort", onAbort);
      streamCtl.abort(); // closes the HTTP stream if the consumer stopped early
    }
  }

  async close(): Promise<void> {
    this.closeCtl.abort();
  }
}

/** Lease ID of the prev_kv a successful txn returned in its first response, if any. */
function prevKvLease(j: Json, field: "response_put" | "response_delete_range"): string | undefined {
  try {
    const first = Array.isArray(j.responses) ? (j.responses[0] as Json | undefined) : undefined;
    const r = first?.[field] as Json | undefined;
    const prev = (field === "response_put" ? r?.prev_kv : (r?.prev_kvs as Json[] | undefined)?.[0]) as Json | undefined;
    return prev ? leaseId(prev.lease) : undefined;
  } catch {
    return undefined;
  }
}

async function readJson(res: Response): Promise<Json> {
  const text = await res.text();
  try {
    const j = JSON.parse(text) as unknown;
    if (j && typeof j === "object" && !Array.isArray(j)) return j as Json;
  } catch {
    /* below */
  }
  throw new Error(`not an etcd v3 gateway answer (HTTP ${res.status}): ${JSON.stringify(text.slice(0, 120))}`);
}

function gatewayError(j: Json, status: number): string {
  const m = j.message ?? j.error;
  if (typeof m === "string" && m) return m;
  if (m && typeof m === "object") return String((m as Json).message ?? JSON.stringify(m));
  return `HTTP ${status}`;
}
