// The etcd watch: /v3/watch streams through the failover client, resumed at the last revision + 1 after any break,
// and a relist when etcd says the revision was compacted.

import { logger } from "../../src/log.ts";
import { sleep } from "../../src/sleep.ts";
import type { Revision, WatchEvent } from "../../src/store.ts";
import type { EtcdClient } from "./client-failover.ts";
import { b64, errorMessage, headerRevision, int64, isAuthTokenError, type Json, prefixEnd } from "./gateway.ts";
import type { EtcdKeys, LeaseExpiries, RawKV } from "./records.ts";
import { escapeLogText } from "../../src/log-text.ts";

const log = logger("etcd");
const enc = new TextEncoder();

const WATCH_BACKOFF_MIN_MS = 100;
const WATCH_BACKOFF_MAX_MS = 5000;

export interface EtcdWatchDeps {
  client: EtcdClient;
  keys: EtcdKeys;
  leases: LeaseExpiries;
  /** false: put events carry what is known of the expiry, without a TimeToLive request each (ReadOptions). */
  expiry?: boolean;
}

/**
 * The newest mod revision of a live key under the prefix, linearizable (a range with hasleader; one key back).
 * Deletions do not count: the watch delivers them past it anyway.
 */
export async function etcdPrefixRevision(client: EtcdClient, keys: EtcdKeys, prefix: string): Promise<number> {
  const k = enc.encode(keys.etcdKey(prefix));
  const j = await client.call("/v3/kv/range", {
    key: b64(k),
    range_end: b64(prefixEnd(k)),
    limit: "1",
    sort_order: "DESCEND",
    sort_target: "MOD",
    keys_only: true,
  });
  const kvs = j.kvs;
  if (!Array.isArray(kvs) || kvs.length === 0) return 0;
  return int64((kvs[0] as Json).mod_revision, "mod_revision");
}

/** The store's current revision (a count-only range: cheap). */
export async function etcdCurrentRevision(client: EtcdClient, keys: EtcdKeys): Promise<number> {
  const j = await client.call("/v3/kv/range", { key: b64(`${keys.root}/`), count_only: true });
  return headerRevision(j);
}

export async function* etcdWatch(
  d: EtcdWatchDeps,
  prefix: string,
  afterRevision: Revision,
  signal: AbortSignal,
): AsyncGenerator<WatchEvent> {
  const { client, keys, leases } = d;
  client.checkOpen();
  const ctl = AbortSignal.any([signal, client.closed]);
  const k = enc.encode(keys.etcdKey(prefix));
  const rangeEnd = b64(prefixEnd(k));
  const where = keys.etcdKey(prefix);
  let next = afterRevision + 1;
  let endpoint = "";
  let backoff = WATCH_BACKOFF_MIN_MS;

  while (!ctl.aborted) {
    let relist = false;
    try {
      for await (const msg of watchStream(client, b64(k), rangeEnd, next, ctl, (ep) => {
        endpoint = ep;
      })) {
        const compactRev = int64(msg.compact_revision, "compact_revision");
        if (compactRev !== 0 || (msg.canceled === true && /compacted/i.test(String(msg.cancel_reason ?? "")))) {
          relist = true;
          break;
        }
        if (msg.canceled === true) throw new Error(`etcd canceled the watch: ${String(msg.cancel_reason ?? "no reason given")}`);
        if (msg.created === true) backoff = WATCH_BACKOFF_MIN_MS;
        const events = msg.events;
        if (events === undefined) {
          // A progress notification: everything up to the header's revision has been sent.
          const rev = (() => {
            try {
              return headerRevision(msg);
            } catch {
              return 0;
            }
          })();
          if (msg.created !== true && rev >= next) {
            next = rev + 1;
            yield { type: "progress", revision: rev };
          }
          continue;
        }
        if (!Array.isArray(events)) throw new Error("watch response events is not an array");
        for (const ev of events as Json[]) {
          const isDelete = ev.type === "DELETE";
          if (ev.type !== undefined && ev.type !== "PUT" && !isDelete)
            throw new Error(`unknown watch event type ${JSON.stringify(ev.type)}`);
          let raw: RawKV | null;
          try {
            raw = keys.parseKV(ev.kv);
          } catch (e) {
            // An unreadable record is skipped (not a reason to drop every peer), but the cursor moves past it.
            const rev = (() => {
              try {
                return int64((ev.kv as Json | undefined)?.mod_revision, "mod_revision");
              } catch {
                return 0;
              }
            })();
            log.warn(`skipping an unreadable etcd watch event: ${escapeLogText((e as Error).message)}`);
            if (rev >= next) {
              next = rev + 1;
              yield { type: "progress", revision: rev };
            }
            continue;
          }
          if (!raw) continue;
          if (isDelete) {
            yield { type: "delete", key: raw.key, revision: raw.revision };
          } else {
            // With expiry, one TimeToLive per new lease, in stream order: events then come no faster than those.
            const exp = d.expiry === false ? leases.known(raw.lease) : await leases.of(raw.lease);
            // An already-expired lease: etcd is deleting the key; its delete event follows.
            if (exp !== "expired")
              yield {
                type: "put",
                kv: { key: raw.key, value: raw.value, revision: raw.revision, expiresAt: exp, createRevision: raw.createRevision },
              };
            else yield { type: "progress", revision: raw.revision };
          }
          next = raw.revision + 1;
        }
      }
    } catch (e) {
      if (ctl.aborted) return;
      const msg = errorMessage(e);
      if (isAuthTokenError(msg)) client.dropToken();
      if (endpoint) client.avoid(endpoint);
      log.warn(`etcd watch on ${where} interrupted (${msg}); resuming at revision ${next} in ${backoff} ms`);
    }
    if (ctl.aborted) return;
    if (relist) {
      // History before our cursor is gone: the consumer re-lists; we continue after the current revision.
      let current: number;
      try {
        current = await etcdCurrentRevision(client, keys);
      } catch (e) {
        if (ctl.aborted) return;
        log.warn(`etcd watch: cannot read the current revision after compaction (${errorMessage(e)}); retrying in ${backoff} ms`);
        await sleep(backoff, ctl);
        backoff = Math.min(backoff * 2, WATCH_BACKOFF_MAX_MS);
        continue; // the retried watch reports the compaction again
      }
      log.info(`etcd watch on ${where}: revision ${next} was compacted; relisting, resuming at ${current + 1}`);
      yield { type: "relist" };
      next = current + 1;
      backoff = WATCH_BACKOFF_MIN_MS;
      continue;
    }
    await sleep(backoff, ctl);
    backoff = Math.min(backoff * 2, WATCH_BACKOFF_MAX_MS);
  }
}

/** Opens /v3/watch and yields each `result`. Ends when the server closes the stream; throws on an error line or a break. */
async function* watchStream(
  client: EtcdClient,
  key: string,
  rangeEnd: string,
  startRevision: number,
  signal: AbortSignal,
  onOpen: (endpoint: string) => void,
): AsyncGenerator<Json> {
  // progress_notify: the server says now and then how far the (quiet) stream is; hasleader (client-failover.ts)
  // makes a member that lost its leader end the stream.
  const body = { create_request: { key, range_end: rangeEnd, start_revision: String(startRevision), progress_notify: true } };
  let stream: Awaited<ReturnType<EtcdClient["openStream"]>>;
  try {
    stream = await client.openStream("/v3/watch", body, signal);
  } catch (e) {
    if (signal.aborted) return;
    throw e;
  }
  onOpen(stream.endpoint);
  try {
    const res = stream.res;
    if (!res.body) throw new Error(`etcd watch at ${stream.endpoint}: no response body`);
    const dec = new TextDecoder();
    let buf = "";
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
    stream.close(); // closes the HTTP stream if the consumer stopped early
  }
}

function parseLine(line: string): Json | null {
  if (line.trim() === "") return null;
  const j = JSON.parse(line) as Json;
  if (j.error !== undefined) {
    const err = j.error as Json;
    throw new Error(`etcd watch error: ${typeof err === "object" && err ? String(err.message ?? JSON.stringify(err)) : String(err)}`);
  }
  if (!j.result || typeof j.result !== "object") throw new Error("watch response without result");
  return j.result as Json;
}
