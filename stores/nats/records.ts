// NATS records: the snapshot of a prefix, conditional writes, and the reaper that CAS-deletes expired records.
// Stream messages are decoded into entries by entries.ts.
//
// Values are the shared record envelope (stores/record-envelope.ts) { v, e, o }: expiry lives in the value on
// 2.9/2.10. Revisions are stream sequence numbers; update/delete are CAS on them (Nats-Expected-Last-Subject-Sequence).

import { logger } from "../../src/log.ts";
import { DeliverPolicy, JetStreamApiCodes, JetStreamApiError } from "@nats-io/jetstream";
import { headers } from "@nats-io/nats-core";
import { StoreUnavailableError } from "../../src/store.ts";
import type { NatsBucket } from "./connection.ts";
import { encodeNatsKey } from "./keys.ts";
import { directSnapshot } from "./direct-list.ts";
import { LatestEntries, type RawEntry } from "./entries.ts";

const log = logger("nats");

const SNAPSHOT_TIMEOUT_MS = 10_000;

/** Maps client errors to StoreUnavailableError (retryable, names the server) unless they are API answers. */
export async function guard<T>(b: NatsBucket, what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof StoreUnavailableError) throw err;
    const msg = (err as Error).message ?? String(err);
    if (err instanceof JetStreamApiError) throw new Error(`NATS ${b.location}: ${what}: ${msg}`, { cause: err });
    throw new StoreUnavailableError(`NATS ${b.location}: ${what}: ${msg}`, { cause: err });
  }
}

function isWrongLastSequence(err: unknown): boolean {
  return (
    err instanceof JetStreamApiError &&
    (err.code === JetStreamApiCodes.StreamWrongLastSequence || err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
  );
}

/** Runs a conditional write: its result, or null when the expected revision did not match. */
export async function casWrite(b: NatsBucket, what: string, fn: () => Promise<number>): Promise<number | null> {
  try {
    const rev = await guard(b, what, fn);
    if (rev > b.written) b.written = rev; // lists never show less than this client wrote (direct-list.ts)
    return rev;
  } catch (err) {
    if (isWrongLastSequence((err as { cause?: unknown }).cause) || isWrongLastSequence(err)) return null;
    throw err;
  }
}

export async function casDelete(b: NatsBucket, key: string, natsKey: string, revision: number): Promise<boolean> {
  const r = await casWrite(b, `delete ${key}`, async () => {
    // What kv.delete(natsKey, { previousSeq }) sends, but keeping the ack's sequence.
    const h = headers();
    h.set("KV-Operation", "DEL");
    h.set("Nats-Expected-Last-Subject-Sequence", String(revision));
    return (await b.js.publish(b.subjectPrefix + natsKey, undefined, { headers: h })).seq;
  });
  return r !== null;
}

/**
 * A conditional write with a server-side TTL (nats-server >= 2.11): the record is kept only if the key's last
 * revision is `previousSeq` (0: the key has none), and the server removes it after `ttlMs` (none: never).
 */
export async function ttlPut(b: NatsBucket, natsKey: string, data: Uint8Array, previousSeq: number, ttlMs: number | null): Promise<number> {
  const h = headers();
  h.set("Nats-Expected-Last-Subject-Sequence", String(previousSeq));
  if (ttlMs !== null) h.set("Nats-TTL", `${Math.max(1, Math.ceil(ttlMs / 1000))}s`);
  const ack = await b.js.publish(b.subjectPrefix + natsKey, data, { headers: h });
  return ack.seq;
}

/** CAS-deletes expired records in the background; losing the race (renewed, already deleted) is fine. */
export class Reaper {
  private readonly pending = new Set<Promise<unknown>>();
  private closed = false;

  constructor(private readonly b: NatsBucket) {}

  cleanup(key: string, revision: number): void {
    if (this.closed || this.b.serverTtl) return; // with server TTLs the server removes it (and leaves a marker)
    const p = casDelete(this.b, key, encodeNatsKey(key), revision)
      .then((ok) => ok && log.debug(`removed expired ${key} (revision ${revision})`))
      .catch((err) => log.debug(`cleanup of expired ${key} failed: ${(err as Error).message}`))
      .finally(() => this.pending.delete(p));
    this.pending.add(p);
  }

  /** Stops taking new work and waits for what is under way. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.pending]);
  }
}

/**
 * The last entry of every key matching a subject filter (deletion markers included), and a revision such that
 * nothing matching the filter was written between it and the snapshot: a watch from revision + 1 misses nothing.
 */
export async function snapshot(b: NatsBucket, filter: string): Promise<{ entries: RawEntry[]; revision: number }> {
  return guard(b, `list ${filter}`, async () => {
    const direct = await directSnapshot(b, filter);
    // Nothing under the filter, as of some moment of some replica: exactly the state at revision 0 (before any write),
    // and a watch from 0 delivers every write the filter has had since. Only a client with writes of its own needs a
    // later revision (its writes must show): from the leader.
    if (direct === "empty" && b.written === 0) return { entries: [], revision: 0 };
    if (direct === "empty") return (await emptySnapshot(b, filter)) ?? consumerSnapshot(b, filter);
    return direct ?? consumerSnapshot(b, filter);
  });
}

/**
 * A replica had nothing under the filter, for a client that has written: a revision at least its own writes, from
 * the leader in two light requests instead of a consumer: the stream's last sequence, then no message under the
 * filter after it (as consumerSnapshot: taken before, checked after). null when something has landed meanwhile.
 */
async function emptySnapshot(b: NatsBucket, filter: string): Promise<{ entries: RawEntry[]; revision: number } | null> {
  const before = (await b.jsm.streams.info(b.stream)).state.last_seq;
  if (before < b.written) return null;
  try {
    const m = await b.jsm.streams.getMessage(b.stream, { last_by_subj: b.subjectPrefix + filter });
    return m === null ? { entries: [], revision: before } : null;
  } catch (err) {
    if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.NoMessageFound) return { entries: [], revision: before };
    throw err;
  }
}

/** snapshot() through an ordered consumer (last per subject) on the stream's leader: any server, any size. */
async function consumerSnapshot(b: NatsBucket, filter: string): Promise<{ entries: RawEntry[]; revision: number }> {
  const before = (await b.jsm.streams.info(b.stream)).state.last_seq;
  const oc = await b.js.consumers.getPushConsumer(b.stream, {
    filter_subjects: b.subjectPrefix + filter,
    deliver_policy: DeliverPolicy.LastPerSubject,
  });
  let revision = before;
  const latest = new LatestEntries(b);
  try {
    const info = await oc.info(true);
    if (info.num_pending > 0) {
      let iter: Awaited<ReturnType<typeof oc.consume>> | undefined;
      try {
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(
            () => reject(new StoreUnavailableError(`NATS ${b.location}: listing ${filter} timed out after ${SNAPSHOT_TIMEOUT_MS} ms`)),
            SNAPSHOT_TIMEOUT_MS,
          );
          oc.consume({
            callback: (m) => {
              revision = Math.max(revision, m.seq);
              latest.add(m);
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
              reject(new StoreUnavailableError(`NATS ${b.location}: listing ${filter} was interrupted`));
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
  return { entries: latest.entries(), revision };
}
