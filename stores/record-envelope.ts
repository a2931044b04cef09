// The record envelope of the stores that keep expiry in the value (SQLite, NATS 2.9/2.10): a CBOR map
// { v: bytes (the value), e: expiresAt epoch ms or null, o?: the hostname that wrote it, c?: the revision the key
// was created at (absent on the creating write, whose own revision it is; copied forward by every update) }.
// Records come from a file or a server anyone may write to: decoding validates the shape and says what is wrong.

// Not the package root: its entry loads the cbor-extract native addon, which misreads records and can crash Bun
// 1.4.5. decode-no-eval is a self-contained pure-JS decoder that never compiles code from record structures.
import { Decoder } from "cbor-x/decode-no-eval";
import { Encoder } from "cbor-x/encode";
import { MAX_VALUE_BYTES } from "../src/store.ts";

/** The value limit plus room for the envelope's own fields. */
export const MAX_ENVELOPE_BYTES = MAX_VALUE_BYTES + 1024;

export interface Envelope {
  v: Uint8Array;
  e: number | null;
  o?: string;
  c?: number;
}

const encoder = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false, variableMapSize: true });
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true });

export function encodeEnvelope(value: Uint8Array, expiresAt: number | null, owner?: string, created?: number): Uint8Array {
  const rec: Envelope = owner === undefined ? { v: value, e: expiresAt } : { v: value, e: expiresAt, o: owner };
  if (created !== undefined) rec.c = created;
  // Copy: the encoder reuses its buffer, and writes are async.
  return new Uint8Array(encoder.encode(rec));
}

/** The envelope, or a description of what is wrong with the bytes. */
export function decodeEnvelope(data: unknown): Envelope | string {
  if (!(data instanceof Uint8Array)) return "record is not bytes";
  if (data.byteLength > MAX_ENVELOPE_BYTES) return `record is ${data.byteLength} bytes, over the ${MAX_ENVELOPE_BYTES}-byte limit`;
  let x: unknown;
  try {
    x = decoder.decode(data);
  } catch (err) {
    return `not CBOR (${err instanceof Error ? err.message : String(err)})`;
  }
  if (typeof x !== "object" || x === null || Array.isArray(x) || x instanceof Uint8Array) return "not a CBOR map";
  const r = x as Record<string, unknown>;
  if (!(r.v instanceof Uint8Array)) return `field "v" is not a byte string`;
  if (r.e !== null && !(typeof r.e === "number" && Number.isSafeInteger(r.e) && r.e >= 0)) {
    return `field "e" is neither null nor an epoch-ms integer`;
  }
  if (r.o !== undefined && typeof r.o !== "string") return `field "o" is not a string`;
  if (r.c !== undefined && !(typeof r.c === "number" && Number.isSafeInteger(r.c) && r.c > 0)) return `field "c" is not a revision`;
  // Copy: cbor-x may hand out a view of the message buffer.
  const out: Envelope = { v: new Uint8Array(r.v), e: r.e as number | null };
  if (r.o !== undefined) out.o = r.o as string;
  if (r.c !== undefined) out.c = r.c as number;
  return out;
}

/** The revision the key was created at: recorded, or this write's own revision if it was the creating one. */
export const envelopeCreated = (rec: Envelope, revision: number): number => rec.c ?? revision;

export const envelopeExpired = (rec: Envelope, now = Date.now()): boolean => rec.e !== null && rec.e <= now;
