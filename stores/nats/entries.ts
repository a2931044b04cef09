// NATS stream messages decoded into bucket entries. Untrusted: a foreign key or an unreadable value is named (escaped)
// in a warning and skipped, never an exception.

import { logger } from "../../src/log.ts";
import { escapeLogText, logText } from "../../src/log-text.ts";
import { decodeEnvelope, type Envelope } from "../record-envelope.ts";
import type { NatsBucket } from "./connection.ts";
import { decodeNatsKey } from "./keys.ts";

const log = logger("nats");

/** One raw bucket entry as read from the stream. rec is null when the value could not be decoded. */
export interface RawEntry {
  key: string;
  revision: number;
  op: "PUT" | "DEL" | "PURGE";
  rec: Envelope | null;
}

/** A stored message as a consumer (JsMsg) or a direct get (subject and sequence from its headers) delivers it. */
export interface StoredRecord {
  subject: string;
  seq: number;
  headers?: { get(k: string): string };
  data: Uint8Array;
}

/** Decodes a stream message; null (warned) when its key is not one of ours. */
export function toRawEntry(b: NatsBucket, m: StoredRecord): RawEntry | null {
  const natsKey = m.subject.startsWith(b.subjectPrefix) ? m.subject.slice(b.subjectPrefix.length) : m.subject;
  const key = decodeNatsKey(natsKey);
  if (key === null) {
    log.warn(`NATS bucket ${b.bucket}: skipping key ${logText(natsKey)}: not a key this store writes`);
    return null;
  }
  // A server delete marker (2.11+: a per-message TTL ran out, or a purge): MaxAge and Purge read as PURGE, Remove as DEL.
  const marker = m.headers?.get("Nats-Marker-Reason") ?? "";
  const hop = marker === "Remove" ? "DEL" : marker !== "" ? "PURGE" : (m.headers?.get("KV-Operation") ?? "");
  const op = hop === "DEL" || hop === "PURGE" ? hop : "PUT";
  if (op !== "PUT") return { key, revision: m.seq, op, rec: null };
  const rec = decodeEnvelope(m.data);
  if (typeof rec === "string") {
    log.warn(`NATS bucket ${b.bucket}: skipping key ${logText(key)} (${logText(natsKey)}) at revision ${m.seq}: ${escapeLogText(rec)}`);
    return { key, revision: m.seq, op, rec: null };
  }
  return { key, revision: m.seq, op, rec };
}

/**
 * The newest entry per key of a listing, decoded as each message arrives so that no raw message is kept: held until
 * the end, 10k JsMsg (views into the client's read buffers) took ~50 MB of RssAnon at 10k leases, ~25 MB decoded.
 */
export class LatestEntries {
  private readonly latest = new Map<string, RawEntry>();
  constructor(private readonly b: NatsBucket) {}

  add(m: StoredRecord): void {
    const e = toRawEntry(this.b, m);
    if (e === null) return;
    // Writes that land while a consumer reads add later messages for keys already seen: the newest per key wins, so
    // an old PUT never stands beside the DEL that followed it.
    const seen = this.latest.get(e.key);
    if (!seen || seen.revision < e.revision) this.latest.set(e.key, e);
  }

  entries(): RawEntry[] {
    return [...this.latest.values()];
  }
}
