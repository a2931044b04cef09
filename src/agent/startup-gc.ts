// After a bulk start (thousands of peers) the start-up's garbage is collected before ready is reported. JSC collects
// only when allocation asks for it, and the agent's idle GC timer is off (runtime-env.ts), so the dead list, the first
// plan and its command results (~20-40 MB at 10k peers) would stay until the agent's next burst of work, which may be
// the full reconcile minutes later. One full collection costs ~15 ms at 10k peers; a small start skips it.
// (Most pages it frees go back to the kernel at once with the agent's MIMALLOC_PURGE_DELAY=0, runtime-env.ts; the rest,
// in partly used pages, within ~200 ms through the allocator's background purge.)
import { BULK_WORK } from "../jit-policy.ts";

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
  return true;
}
