// The etcd store: flannel's key layout and lease semantics over etcd's v3 JSON gateway (/v3/...), with fetch only.
//
// Layout (docs/flannel-compat.md §2): logical "config" -> "<prefix>/config", "subnets/10.5.52.0-24" ->
// "<prefix>/subnets/10.5.52.0-24". A record with a ttl is attached to its own etcd lease (etcd deletes the key
// when the lease runs out); a record without one has no lease (a reservation, as flannel's docs write them).
//
// Differences from flanneld, on purpose: renewal is a compare-and-set txn on mod_revision (flannel's blind put is
// how two hosts ended up sharing a subnet), and the lease a renewal replaces is revoked once no key uses it.
//
// The parts: client-failover.ts (endpoints, auth, the failover loop), gateway.ts (wire encoding), records.ts (kv
// parsing, lease expiry), watch.ts. This file is the Store: options, reads and conditional writes.

import { logger } from "../../src/log.ts";
import { readFile } from "node:fs/promises";
import {
  type KV,
  type ListResult,
  type ReadOptions,
  type Revision,
  type Store,
  SUBNETS_PREFIX,
  type WatchEvent,
  type WriteOptions,
} from "../../src/store.ts";
import { checkKey, checkPrefix, checkRevision, checkTtl, checkValue } from "../arguments.ts";
import { EtcdClient, type EtcdTls } from "./client-failover.ts";
import { b64, EtcdError, errorMessage, headerRevision, int64, type Json, leaseId, prefixEnd, prevKvLease } from "./gateway.ts";
import { EtcdKeys, LeaseExpiries, type RawKV } from "./records.ts";
import { etcdPrefixRevision, etcdWatch } from "./watch.ts";

export { EtcdError } from "./gateway.ts";

const log = logger("etcd");
const KIND = "etcd";
const enc = new TextEncoder();

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

let warnedInsecure = false;

export class EtcdStore implements Store {
  readonly kind = KIND;
  readonly location: string;
  private readonly keys: EtcdKeys;
  private readonly leases: LeaseExpiries;

  private constructor(
    private readonly client: EtcdClient,
    prefix: string,
  ) {
    this.location = client.endpoints.join(",");
    this.keys = new EtcdKeys(prefix);
    this.leases = new LeaseExpiries(client);
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
    let tls: EtcdTls | undefined;
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
    return new EtcdStore(new EtcdClient(endpoints, tls, auth, timeout), opts.prefix);
  }

  // ---- leases (etcd's) ----

  private async grant(ttlMs: number): Promise<string> {
    const j = await this.client.call("/v3/lease/grant", { TTL: String(Math.max(1, Math.ceil(ttlMs / 1000))) });
    if (typeof j.error === "string" && j.error) throw new EtcdError(`etcd lease grant: ${j.error}`);
    const id = leaseId(j.ID);
    if (id === "0") throw new EtcdError("etcd lease grant returned no lease ID");
    return id;
  }

  private async revoke(id: string): Promise<void> {
    this.leases.forget(id);
    try {
      await this.client.call("/v3/lease/revoke", { ID: id });
    } catch (e) {
      // It expires by itself; nothing is attached to it.
      log.debug(`revoking etcd lease ${id}: ${errorMessage(e)}`);
    }
  }

  /** Revokes a lease a write replaced, but only if no key uses it any more (someone else's lease stays). */
  private tidyLease(id: string | undefined): void {
    if (!id || id === "0" || this.client.closed.aborted) return;
    void (async () => {
      const j = await this.client.call("/v3/lease/timetolive", { ID: id, keys: true });
      if (int64(j.TTL, "lease TTL") < 0) return;
      if (Array.isArray(j.keys) && j.keys.length > 0) return;
      await this.client.call("/v3/lease/revoke", { ID: id });
    })().catch((e) => log.debug(`tidying etcd lease ${id}: ${errorMessage(e)}`));
  }

  // ---- Store ----

  async get(key: string): Promise<KV | null> {
    checkKey(KIND, key);
    const j = await this.client.call("/v3/kv/range", { key: b64(this.keys.etcdKey(key)) });
    const kvs = await this.leases.attach(
      this.keys.parseKVs(j.kvs, `get ${key}`).filter((r) => r.key === key),
      { reread: async (k) => this.readRaw(k) },
    );
    return kvs[0] ?? null;
  }

  /** The record of one key as etcd has it now (no expiry attached). */
  private async readRaw(key: string): Promise<RawKV | null> {
    const j = await this.client.call("/v3/kv/range", { key: b64(this.keys.etcdKey(key)) });
    return this.keys.parseKVs(j.kvs, `get ${key}`).find((r) => r.key === key) ?? null;
  }

  async list(prefix: string, opts?: ReadOptions): Promise<ListResult> {
    checkPrefix(KIND, prefix);
    const k = enc.encode(this.keys.etcdKey(prefix));
    const j = await this.client.call("/v3/kv/range", { key: b64(k), range_end: b64(prefixEnd(k)) });
    const revision = headerRevision(j);
    const raw = this.keys.parseKVs(j.kvs, `list ${prefix}`);
    // Without expiry: no TimeToLive per lease (200 joiners each reading every other's made a join storm slow). A
    // key whose lease has just run out is still listed until etcd deletes it: taken, never free, a moment longer.
    if (opts?.expiry === false) return { items: this.leases.attachKnown(raw), revision };
    const items = await this.leases.attach(raw, {
      full: prefix === SUBNETS_PREFIX,
      reread: async (key) => this.readRaw(key),
    });
    return { items, revision };
  }

  async create(key: string, value: Uint8Array, opts?: WriteOptions): Promise<Revision | null> {
    this.checkWrite(key, value, opts);
    // flanneld's create: If Version(key) == 0 Then Put(key, value, lease).
    const j = await this.putIf(key, value, { target: "VERSION", result: "EQUAL", version: "0" }, opts);
    return j ? headerRevision(j, "txn revision") : null;
  }

  async update(key: string, value: Uint8Array, revision: Revision, opts?: WriteOptions): Promise<Revision | null> {
    this.checkWrite(key, value, opts);
    checkRevision(KIND, revision);
    if (revision === 0) return null; // no key ever has it
    const j = await this.putIf(key, value, { target: "MOD", result: "EQUAL", mod_revision: String(revision) }, opts);
    if (!j) return null;
    this.tidyLease(prevKvLease(j, "response_put"));
    return headerRevision(j, "txn revision");
  }

  private checkWrite(key: string, value: Uint8Array, opts?: WriteOptions): void {
    this.client.checkOpen();
    checkKey(KIND, key);
    checkValue(KIND, value);
    checkTtl(KIND, opts);
  }

  /**
   * One transaction: if `compare` holds, put the value under a fresh etcd lease (none without ttlMs).
   * Returns the txn response, or null when the compare failed; the fresh lease is revoked unless it was used.
   */
  private async putIf(key: string, value: Uint8Array, compare: Json, opts?: WriteOptions): Promise<Json | null> {
    const lease = opts?.ttlMs !== undefined ? await this.grant(opts.ttlMs) : "0";
    const k = b64(this.keys.etcdKey(key));
    let j: Json;
    try {
      j = await this.client.call("/v3/kv/txn", {
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
    this.client.checkOpen();
    checkKey(KIND, key);
    checkRevision(KIND, revision);
    if (revision === 0) return false;
    const k = b64(this.keys.etcdKey(key));
    const j = await this.client.call("/v3/kv/txn", {
      compare: [{ key: k, target: "MOD", result: "EQUAL", mod_revision: String(revision) }],
      success: [{ request_delete_range: { key: k, prev_kv: true } }],
    });
    if (j.succeeded !== true) return false;
    this.tidyLease(prevKvLease(j, "response_delete_range"));
    return true;
  }

  watch(prefix: string, afterRevision: Revision, signal: AbortSignal, opts?: ReadOptions): AsyncIterable<WatchEvent> {
    checkPrefix(KIND, prefix);
    checkRevision(KIND, afterRevision, "afterRevision");
    const deps = { client: this.client, keys: this.keys, leases: this.leases, expiry: opts?.expiry !== false };
    return etcdWatch(deps, prefix, afterRevision, signal);
  }

  currentRevision(prefix: string): Promise<Revision> {
    checkPrefix(KIND, prefix);
    return etcdPrefixRevision(this.client, this.keys, prefix);
  }

  async close(): Promise<void> {
    this.client.close();
  }
}
