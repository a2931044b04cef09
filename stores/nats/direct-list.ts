// A prefix's snapshot in one batched direct get (nats-server >= 2.11, ADR-31 multi_last): the last message of every
// subject under the filter, as of one stream sequence (Nats-UpTo-Sequence of the end-of-batch marker; the server
// reads under a lock that keeps writes out, so the batch is exactly the state at that sequence). No consumer is
// made, read and deleted per list, which is what made 200 concurrent acquisitions slow.
//
// Who answers: any replica of an R3 stream (the queue group of direct gets), so the state may be a few writes behind
// the leader. That is still a correct snapshot, only of an earlier moment: its revision is the up-to sequence, so a
// watch from revision + 1 gets every write the snapshot did not show; acquisition writes with create-if-absent and
// compare-and-set on the leader, so a stale look only costs a lost race and another try. What a stale replica must
// not do is hide this client's own writes (read-your-writes, as a leader read gives): a batch older than the newest
// revision this client wrote is not used (the caller reads through the leader instead).
//
// Not available (null: the caller uses its consumer): servers before 2.11 or a stream without allow_direct (known at
// open, connection.ts), a server that ignores the batch (its first reply lacks Nats-Num-Pending: noted once), more
// than 1024 subjects under the filter (the server's limit for multi_last, status 413: noted for a while), no answer
// within DIRECT_TIMEOUT_MS (noted for a while too), or a batch behind our own writes. "empty": nothing under the filter (status 404, which
// carries no sequence: records.ts says what revision that is).

import { logger } from "../../src/log.ts";
import { createInbox, type Msg } from "@nats-io/nats-core";
import type { NatsBucket } from "./connection.ts";
import { LatestEntries, type RawEntry } from "./entries.ts";

const log = logger("nats");

/** A replica that does not answer this fast is skipped for the leader path (which has its own timeout). */
const DIRECT_TIMEOUT_MS = 2000;
/** After a 413 (too many subjects) or no answer, lists go through the consumer for this long before trying again. */
const RETRY_MS = 60_000;
/** The status of a request nobody answered in time (not a server status). */
const NO_ANSWER = -1;

/**
 * Filters that had more subjects than multi_last allows, and when they may be tried again (epoch ms); "" for the
 * whole bucket after a direct get went unanswered (a hung replica, or credentials that do not allow the request:
 * every list would otherwise wait DIRECT_TIMEOUT_MS first).
 */
const paused = new WeakMap<NatsBucket, Map<string, number>>();

function pause(b: NatsBucket, filter: string): void {
  let m = paused.get(b);
  if (!m) paused.set(b, (m = new Map()));
  m.set(filter, Date.now() + RETRY_MS);
}

function isPaused(b: NatsBucket, filter: string): boolean {
  const m = paused.get(b);
  const now = Date.now();
  return (m?.get(filter) ?? 0) > now || (m?.get("") ?? 0) > now;
}

/**
 * status: the end-of-batch or error code; 0 when the server sent one message without a pending count (no batches).
 * maxSeq: the highest sequence among the messages, or NaN when one was not what a direct get sends.
 */
type Page = { latest: LatestEntries; maxSeq: number; status: number; upTo: number; pending: number };

/** One multi_last request for `subject`: its entries, decoded as they arrive, and the end-of-batch (or error) status. */
function requestLast(b: NatsBucket, subject: string): Promise<Page> {
  return new Promise<Page>((resolve) => {
    const latest = new LatestEntries(b);
    let maxSeq = 0;
    // Decoded on arrival, so no message outlives its callback (entries.ts).
    const add = (m: Msg) => {
      const seq = Number(m.headers?.get("Nats-Sequence") ?? "");
      const subject = m.headers?.get("Nats-Subject") ?? "";
      // NaN: not what a direct get sends (the batch is not used).
      if (!Number.isSafeInteger(seq) || seq <= 0 || subject === "") maxSeq = Number.NaN;
      else if (!Number.isNaN(maxSeq)) {
        maxSeq = Math.max(maxSeq, seq);
        latest.add({ subject, seq, headers: m.headers, data: m.data });
      }
    };
    const finish = (p: Omit<Page, "latest" | "maxSeq">) => {
      clearTimeout(timer);
      sub.unsubscribe();
      resolve({ latest, maxSeq, ...p });
    };
    const timer = setTimeout(() => finish({ status: NO_ANSWER, upTo: 0, pending: 0 }), DIRECT_TIMEOUT_MS);
    const inbox = createInbox(); // this store sets no inbox prefix
    const sub = b.nc.subscribe(inbox, {
      callback: (err, m) => {
        if (err) return finish({ status: 503, upTo: 0, pending: 0 });
        const h = m.headers;
        const code = h?.code ?? 0;
        if (code !== 0 && code !== 200) {
          const n = (k: string) => Number(h?.get(k) ?? "") || 0;
          return finish({ status: code, upTo: n("Nats-UpTo-Sequence"), pending: n("Nats-Num-Pending") });
        }
        // A server without batches answers with one message and no pending count.
        if (!h?.get("Nats-Num-Pending")) return finish({ status: 0, upTo: 0, pending: 0 });
        add(m);
      },
    });
    b.nc.publish(`$JS.API.DIRECT.GET.${b.stream}`, JSON.stringify({ multi_last: [subject] }), { reply: inbox });
  });
}

/** The last entry of every key under `filter` and the sequence it is exact at, or null (see the header). */
export async function directSnapshot(b: NatsBucket, filter: string): Promise<{ entries: RawEntry[]; revision: number } | "empty" | null> {
  if (!b.directBatch) return null;
  if (isPaused(b, filter)) return null;
  const p = await requestLast(b, b.subjectPrefix + filter);
  if (p.status === 0) {
    b.directBatch = false;
    log.info(`NATS ${b.location}: the server answers direct gets without batches; lists use a consumer`);
    return null;
  }
  if (p.status === 413) {
    pause(b, filter);
    log.debug(`list ${filter}: more subjects than one direct get returns; listing through a consumer`);
    return null;
  }
  if (p.status === NO_ANSWER) {
    pause(b, "");
    log.debug(`list ${filter}: no answer to a direct get within ${DIRECT_TIMEOUT_MS} ms; listing through a consumer for a while`);
    return null;
  }
  // pending > 0: the batch stopped at the server's byte limit (max_pending, 64 MB by default); not for leases.
  if (p.status === 404) return "empty";
  if (p.status !== 204 || p.upTo === 0 || p.pending !== 0) {
    log.debug(`list ${filter}: direct get answered ${p.status}; listing through a consumer`);
    return null;
  }
  // A replica behind this client's own writes would hide them: read through the leader instead.
  if (p.upTo < b.written) return null;
  if (!(p.maxSeq <= p.upTo)) return null; // a message past the batch's own sequence, or not shaped as a direct get's (NaN)
  return { entries: p.latest.entries(), revision: p.upTo };
}
