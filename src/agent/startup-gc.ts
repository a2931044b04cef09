// After a bulk start (thousands of peers) the start-up's garbage is collected before ready is reported. JSC collects
// only when allocation asks for it, and the agent's idle GC timer is off (runtime-env.ts), so the dead list, the first
// plan and its command results (~20-40 MB at 10k peers) would stay until the agent's next burst of work, which may be
// the full reconcile minutes later. One full collection costs ~15 ms at 10k peers; a small start skips it.
// The pages it frees go back to the kernel on the allocator's next turns (with the agent's MIMALLOC_PURGE_DELAY=0,
// runtime-env.ts), 5-40 ms later: ready waits for that (returnedPages, ≤ 60 ms), so the memory read at ready is what
// the agent keeps.
import { readFileSync } from "node:fs";
import { BULK_WORK } from "../jit-policy.ts";
import { logger } from "../log.ts";

const log = logger("agent");

const TURNS = 3;

/** A full collection once the first sync is programmed, when it held `peers` >= BULK_WORK. */
export async function collectStartupGarbage(peers: number): Promise<boolean> {
  if (peers < BULK_WORK) return false;
  // A few event-loop turns first, off the start-up's stack (JSC scans it conservatively) and past the last references
  // to the first plan (the ip process's I/O, the store client's consumer): collected at once, 10k peers' plan and
  // results (~100,000 objects, 140,000 strings) were still reachable; after one turn, on NATS, still.
  for (let i = 0; i < TURNS; i++) {
    await new Promise((r) => setTimeout(r, 0));
    await new Promise((r) => setImmediate(r));
  }
  Bun.gc(true);
  // And once JSC is idle, the start-up's compiled code and other unused memory go too (what runs again is compiled
  // again): 60 s after ready at 10k peers RssAnon 42 -> 35 MB on SQLite, 48-50 -> 43-44 MB on NATS. Deprecated in
  // Bun's types but there in the pinned runtime; without it only this part is lost.
  if (typeof Bun.shrink === "function") {
    Bun.shrink();
    // It runs "when JSC is idle": one more turn, so it is done before ready is reported (10k peers: heap 27.7 ->
    // 23.2 MB, RssAnon a further 1-16 MB down, in ~3 ms).
    await new Promise((r) => setImmediate(r));
  }
  const t0 = performance.now();
  const before = anonResidentBytes();
  const after = await returnedPages(before);
  if (before !== null && after !== null)
    log.debug(`start-up collection: RssAnon ${mb(before)} -> ${mb(after)} MB in ${Math.round(performance.now() - t0)} ms`);
  return true;
}

/** The longest wait for the freed pages to go back to the kernel, and its step. */
const SETTLE_MAX_MS = 60;
const SETTLE_STEP_MS = 5;
/** A fall smaller than this is "flat"; one at least this big is the return being seen. */
const FLAT_BYTES = 256 * 1024;
const FALL_BYTES = 1024 * 1024;

/**
 * Waits (at most SETTLE_MAX_MS) until the pages the collection freed are back with the kernel, so the memory a
 * supervisor reads at ready is the agent's settled footprint, not the start-up's peak. They go back on the allocator's
 * threads' next turns, not during the collection: measured at 10k peers, RssAnon right after it was 46-52 MB, 5 ms
 * later 39-41 MB, ~35 ms later 33-40 MB, and a reading taken at ready therefore fell anywhere in 37-54 MB. Done when
 * the fall has been seen and two steps were flat after it (~15 ms), else after the longest wait. Returns the last
 * reading (null when RssAnon cannot be read: then there is no wait).
 */
export async function returnedPages(
  start: number | null,
  read: () => number | null = anonResidentBytes,
  wait: (ms: number) => Promise<unknown> = (ms) => new Promise((r) => setTimeout(r, ms)),
): Promise<number | null> {
  let prev = start;
  if (prev === null) return null;
  let fell = false;
  let flat = 0;
  for (let waited = 0; waited < SETTLE_MAX_MS && !(fell && flat >= 2); waited += SETTLE_STEP_MS) {
    await wait(SETTLE_STEP_MS);
    const now = read();
    if (now === null) return null;
    if (prev - now >= FALL_BYTES) fell = true;
    flat = prev - now < FLAT_BYTES ? flat + 1 : 0;
    prev = now;
  }
  return prev;
}

const mb = (b: number): string => (b / 2 ** 20).toFixed(1);

/** RssAnon of this process in bytes (/proc/self/status, or the text given); null when it cannot be read. */
export function anonResidentBytes(status?: string): number | null {
  let text = status;
  if (text === undefined) {
    try {
      text = readFileSync("/proc/self/status", "latin1");
    } catch {
      return null;
    }
  }
  const m = /^RssAnon:\s+(\d+) kB$/m.exec(text);
  return m ? Number(m[1]) * 1024 : null;
}
