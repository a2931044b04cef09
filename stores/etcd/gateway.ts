// etcd's v3 JSON gateway, the wire details: keys/values are base64, int64 fields are JSON strings (lease IDs exceed
// 2^53: kept as strings), proto3 JSON omits defaults (failed txn: no `succeeded`; PUT watch event: no `type`; empty
// range: no `kvs`). Everything here is pure: no fetch.

export type Json = Record<string, unknown>;

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

const enc = new TextEncoder();

export const b64 = (b: Uint8Array | string): string => Buffer.from(typeof b === "string" ? enc.encode(b) : b).toString("base64");
const B64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict base64 decode (Buffer.from silently skips junk); throws on anything that is not base64. */
export function unb64(s: unknown, what: string): Uint8Array {
  if (s === undefined) return new Uint8Array(0); // proto3: empty bytes are omitted
  if (typeof s !== "string" || !B64_RE.test(s)) throw new Error(`${what} is not base64`);
  return new Uint8Array(Buffer.from(s, "base64"));
}

/** proto3 int64 as JSON: a decimal string, absent = 0. Must fit a JS number exactly. */
export function int64(v: unknown, what: string): number {
  if (v === undefined) return 0;
  const s = typeof v === "number" ? String(v) : v;
  if (typeof s !== "string" || !/^-?\d{1,19}$/.test(s)) throw new Error(`${what} is not an int64: ${JSON.stringify(v)}`);
  const n = Number(s);
  if (!Number.isSafeInteger(n)) throw new Error(`${what} is out of range: ${s}`);
  return n;
}

/** A lease ID kept as its decimal string (they do not fit a double). */
export function leaseId(v: unknown): string {
  if (v === undefined) return "0";
  const s = typeof v === "number" ? String(v) : v;
  if (typeof s !== "string" || !/^-?\d{1,20}$/.test(s)) throw new Error(`lease ID is not an int64: ${JSON.stringify(v)}`);
  return s.replace(/^(-?)0+(?=\d)/, "$1");
}

/** etcd's prefix range end: the key with its last byte incremented (trailing 0xff bytes dropped). */
export function prefixEnd(key: Uint8Array): Uint8Array {
  const end = key.slice();
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i] = end[i]! + 1;
      return end.slice(0, i + 1);
    }
  }
  return new Uint8Array([0]); // all 0xff: the whole keyspace from key on
}

/** The header revision of an answer. */
export const headerRevision = (j: Json, what = "header revision"): number => int64((j.header as Json | undefined)?.revision, what);

/** An error's message, with Bun's error code (ECONNREFUSED, ...) in front when the message does not already say it. */
export const errorMessage = (e: unknown): string => {
  if (!(e instanceof Error)) return String(e);
  const code = (e as { code?: unknown }).code;
  return typeof code === "string" && !e.message.includes(code) ? `${code}: ${e.message}` : e.message;
};

export const isAuthTokenError = (msg: string): boolean => /invalid auth token|user name is empty|auth token is not provided/i.test(msg);

export async function readJson(res: Response): Promise<Json> {
  const text = await res.text();
  try {
    const j = JSON.parse(text) as unknown;
    if (j && typeof j === "object" && !Array.isArray(j)) return j as Json;
  } catch {
    /* below */
  }
  throw new Error(`not an etcd v3 gateway answer (HTTP ${res.status}): ${JSON.stringify(text.slice(0, 120))}`);
}

export function gatewayError(j: Json, status: number): string {
  const m = j.message ?? j.error;
  if (typeof m === "string" && m) return m;
  if (m && typeof m === "object") return String((m as Json).message ?? JSON.stringify(m));
  return `HTTP ${status}`;
}

/** Lease ID of the prev_kv a successful txn returned in its first response, if any. */
export function prevKvLease(j: Json, field: "response_put" | "response_delete_range"): string | undefined {
  try {
    const first = Array.isArray(j.responses) ? (j.responses[0] as Json | undefined) : undefined;
    const r = first?.[field] as Json | undefined;
    const prev = (field === "response_put" ? r?.prev_kv : (r?.prev_kvs as Json[] | undefined)?.[0]) as Json | undefined;
    return prev ? leaseId(prev.lease) : undefined;
  } catch {
    return undefined;
  }
}
