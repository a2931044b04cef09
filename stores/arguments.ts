// Argument checks every store runs before touching its server or file (the contract in src/store.ts): bad input is
// an Error naming the problem and the store, never a half-done write.

import type { Revision, WriteOptions } from "../src/store.ts";

export function checkKey(kind: string, key: string): void {
  if (typeof key !== "string" || key.length === 0 || key.includes("\0")) {
    throw new Error(`${kind} store: invalid key ${JSON.stringify(key)}`);
  }
}

export function checkPrefix(kind: string, prefix: string): void {
  if (typeof prefix !== "string" || prefix.includes("\0")) {
    throw new Error(`${kind} store: invalid prefix ${JSON.stringify(prefix)}`);
  }
}

export function checkValue(kind: string, value: Uint8Array): void {
  if (!(value instanceof Uint8Array)) throw new Error(`${kind} store: value must be a Uint8Array`);
}

/** A revision argument: a non-negative integer. 0 is valid and matches no key (update null, delete false). */
export function checkRevision(kind: string, revision: Revision, what = "revision"): void {
  if (!Number.isSafeInteger(revision) || revision < 0) {
    throw new Error(`${kind} store: ${what} must be a non-negative integer, got ${String(revision)}`);
  }
}

/** The ttl in whole milliseconds, or null for a record that never expires. */
export function checkTtl(kind: string, opts: WriteOptions | undefined): number | null {
  const ttl = opts?.ttlMs;
  if (ttl === undefined) return null;
  if (typeof ttl !== "number" || !Number.isFinite(ttl) || ttl <= 0) {
    throw new Error(`${kind} store: ttlMs must be a positive number, got ${String(ttl)}`);
  }
  return Math.ceil(ttl);
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
