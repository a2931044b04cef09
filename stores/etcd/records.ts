// etcd records: gateway kvs parsed into logical keys (untrusted: anything unreadable is named and skipped), and the
// expiry of each record, which etcd keeps in the lease the key is attached to.

import { logger } from "../../src/log.ts";
import { type KV, MAX_VALUE_BYTES, UNREAD_EXPIRY } from "../../src/store.ts";
import type { EtcdClient } from "./client-failover.ts";
import { EtcdError, int64, type Json, leaseId, unb64 } from "./gateway.ts";
import { escapeLogText } from "../../src/log-text.ts";

const log = logger("etcd");
const utf8 = new TextDecoder("utf-8", { fatal: true });

export interface RawKV {
  key: string;
  value: Uint8Array;
  revision: number;
  /** create_revision: when the key was (last) created. */
  createRevision: number;
  /** Decimal lease ID; "0" = no lease. */
  lease: string;
}

/** Expiry of a lease: epoch ms, null = no lease, "expired" = the lease is gone (its keys are being deleted). */
export type LeaseExpiry = number | null | "expired";

const TTL_LOOKUP_CONCURRENCY = 16;
/** Entries the cache may hold beyond twice the leases of the last full listing (a lease and its renewal's). */
const LEASE_CACHE_SLACK = 1024;

/** Maps logical keys onto "<prefix>/<key>" and back. */
export class EtcdKeys {
  readonly root: string;
  constructor(prefix: string) {
    // Path-join: "/coreos.com/network/" and "/coreos.com/network" are the same prefix.
    this.root = prefix.replace(/\/+$/, "");
  }
  etcdKey(logical: string): string {
    return `${this.root}/${logical}`;
  }
  /** The logical key of an etcd key, or null if it is not under our prefix. */
  logicalKey(etcdKey: string): string | null {
    const p = `${this.root}/`;
    return etcdKey.startsWith(p) ? etcdKey.slice(p.length) : null;
  }

  /** Parses one gateway kv; null when it is not ours; throws naming the problem (the caller skips it with a warning). */
  parseKV(kv: unknown): RawKV | null {
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
    // Over the value limit: skipped before the base64 is checked or decoded (no copy of a hostile megabyte).
    if (typeof o.value === "string" && o.value.length > Math.ceil(MAX_VALUE_BYTES / 3) * 4)
      throw new Error(`${etcdKey}: value is about ${Math.floor((o.value.length * 3) / 4)} bytes, over the ${MAX_VALUE_BYTES}-byte limit`);
    try {
      value = unb64(o.value, "value");
    } catch (e) {
      throw new Error(`${etcdKey}: ${(e as Error).message}`);
    }
    const revision = int64(o.mod_revision, `${etcdKey} mod_revision`);
    // A delete event's kv has no create_revision; a put's always has one.
    const createRevision = o.create_revision === undefined ? revision : int64(o.create_revision, `${etcdKey} create_revision`);
    return { key, value, revision, createRevision, lease: leaseId(o.lease) };
  }

  parseKVs(kvs: unknown, what: string): RawKV[] {
    if (kvs === undefined) return [];
    if (!Array.isArray(kvs)) throw new EtcdError(`${what}: kvs is not an array`);
    const out: RawKV[] = [];
    for (const kv of kvs) {
      try {
        const r = this.parseKV(kv);
        if (r) out.push(r);
      } catch (e) {
        log.warn(`skipping an unreadable etcd record in ${escapeLogText(what)}: ${escapeLogText((e as Error).message)}`);
      }
    }
    return out;
  }
}

/**
 * Expiry of lease IDs, cached: flannel leases are granted with a fixed TTL and renewed by a new grant, never kept
 * alive, so an ID's expiry does not move. Without the cache every list() costs one TimeToLive call per lease
 * (flanneld's N+1). "expired" is never cached, and a cached time that has passed is asked again.
 */
export class LeaseExpiries {
  /** Lease ID -> expiry (epoch ms), in insertion order (the oldest go first when it is over its bound). */
  private readonly cache = new Map<string, number>();
  /** Lease IDs in the last full listing: the cache is bounded by the leases that exist, not a fixed number. */
  private listed = 0;

  constructor(private readonly client: EtcdClient) {}

  forget(id: string): void {
    this.cache.delete(id);
  }

  /** Without a request: null for no lease, the cached expiry if known, else UNREAD_EXPIRY (a { expiry: false } read). */
  known(id: string): number | null {
    if (id === "0") return null;
    const hit = this.cache.get(id);
    return hit !== undefined && hit > Date.now() ? hit : UNREAD_EXPIRY;
  }

  /** The records with what is known of their expiry, and no TimeToLive request (see ReadOptions.expiry). */
  attachKnown(raw: RawKV[]): KV[] {
    return raw.map((r) => ({
      key: r.key,
      value: r.value,
      revision: r.revision,
      expiresAt: this.known(r.lease),
      createRevision: r.createRevision,
    }));
  }

  private async lookup(id: string): Promise<LeaseExpiry> {
    const j = await this.client.call("/v3/lease/timetolive", { ID: id });
    const ttl = int64(j.TTL, "lease TTL");
    // TTL -1: the lease is unknown or expired, so etcd is about to delete its keys.
    return ttl < 0 ? "expired" : Date.now() + ttl * 1000;
  }

  async of(id: string): Promise<LeaseExpiry> {
    if (id === "0") return null;
    const hit = this.cache.get(id);
    if (hit !== undefined && hit > Date.now()) return hit;
    const e = await this.lookup(id);
    if (typeof e === "number") {
      this.cache.delete(id); // re-inserted at the end: the oldest entries are the first to go
      this.cache.set(id, e);
      this.bound();
    } else this.cache.delete(id);
    return e;
  }

  /** Keeps the cache within 2 x the listed leases + slack: passed expiries first, then the oldest entries. */
  private bound(): void {
    const max = 2 * this.listed + LEASE_CACHE_SLACK;
    if (this.cache.size <= max) return;
    const now = Date.now();
    for (const [id, at] of this.cache) if (at <= now) this.cache.delete(id);
    for (const id of this.cache.keys()) {
      if (this.cache.size <= max) break;
      this.cache.delete(id);
    }
  }

  /** Number of cached lease expiries (for tests). */
  get size(): number {
    return this.cache.size;
  }

  /**
   * Attaches expiresAt, dropping records whose lease has already run out. The range and the TTL reads are separate
   * requests, so a renewal in between (a new lease, the old one revoked) makes a live record look expired: with
   * `reread`, such a record is read again and kept if its current lease is alive. `full`: a listing of the whole
   * lease prefix, which sets the cache's bound.
   */
  async attach(raw: RawKV[], opts: { reread?: (key: string) => Promise<RawKV | null>; full?: boolean } = {}): Promise<KV[]> {
    const ids = [...new Set(raw.map((r) => r.lease).filter((l) => l !== "0"))];
    if (opts.full) this.listed = ids.length;
    const exp = new Map<string, LeaseExpiry>();
    const got = await mapLimit(ids, TTL_LOOKUP_CONCURRENCY, (id) => this.of(id));
    for (const [i, id] of ids.entries()) exp.set(id, got[i]!);
    const out: KV[] = [];
    const looksExpired: RawKV[] = [];
    for (const r of raw) {
      const e = r.lease === "0" ? null : exp.get(r.lease)!;
      if (e === "expired") looksExpired.push(r);
      else out.push({ key: r.key, value: r.value, revision: r.revision, expiresAt: e, createRevision: r.createRevision });
    }
    if (opts.reread && looksExpired.length > 0) {
      const reread = opts.reread;
      const again = await mapLimit(looksExpired, TTL_LOOKUP_CONCURRENCY, async (r) => {
        const now = await reread(r.key);
        if (!now || now.lease === r.lease) return null; // gone, or really on the expired lease
        const e = await this.of(now.lease);
        return e === "expired" ? null : { now, e };
      });
      for (const x of again) {
        if (x)
          out.push({ key: x.now.key, value: x.now.value, revision: x.now.revision, expiresAt: x.e, createRevision: x.now.createRevision });
      }
    }
    return out;
  }
}

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
