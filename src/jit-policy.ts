// JavaScriptCore's JIT policy (Bun.unsafe.setJITPolicy). The binary starts with the tier-up thresholds scaled up
// (scripts/compile.ts): start-up code runs once, and compiling it costs more CPU than interpreting it (50 agents
// started at once on 2 cores: ~1.5-2 s of JIT threads of 7-8 s in all). Bulk work (thousands of leases) is hot
// enough for the JIT to pay, so it gets the normal policy back, for good.
/** Records from which a batch counts as bulk work (also: the start-up collection, agent/startup-gc.ts). */
export const BULK_WORK = 1000;
let normal = false;

/** About to process `n` records (a lease list): from BULK_WORK on, the normal JIT policy from now on. */
export function bulkWork(n: number): void {
  if (n < BULK_WORK || normal) return;
  normal = true;
  Bun.unsafe.setJITPolicy(1);
}
