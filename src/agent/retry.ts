// Waiting for things outside our control (the store, the network config, a free subnet): repeat, log each distinct
// failure once, stop when the agent stops. Settings that can never work are a FatalError and end the agent.
import { logger } from "../log.ts";
import { sleep } from "../sleep.ts";
import { StoreUnavailableError } from "../store.ts";

const log = logger("agent");

/** A failure retrying cannot fix (bad store settings, an invalid network config is not one: it can be fixed live). */
export class FatalError extends Error {}

/** For store connects: an unreachable store is retried; anything else (lone certfile, bad path) is fatal. */
export const settingsAreFatal = (e: unknown): never => {
  if (e instanceof StoreUnavailableError) throw e;
  throw new FatalError(`cannot use the store: ${(e as Error).message}`);
};

/** Repeats `attempt` every second until it returns a value, logging each distinct failure once; FatalError ends it. */
export async function retryEverySecond<T>(
  what: string,
  signal: AbortSignal,
  attempt: () => Promise<T | null>,
  onError?: () => void,
): Promise<T | null> {
  let last = "";
  while (!signal.aborted) {
    try {
      const v = await attempt();
      if (v !== null) return v;
    } catch (e) {
      if (e instanceof FatalError) throw e;
      onError?.();
      const msg = (e as Error).message;
      if (msg !== last) log.error(`${what}: ${msg} (retrying every second)`);
      last = msg;
    }
    await sleep(1000, signal);
  }
  return null;
}

/** Exponential backoff delays: 500 ms doubling to 10 s. */
export class Backoff {
  private ms: number;
  constructor(
    private readonly minMs = 500,
    private readonly maxMs = 10_000,
  ) {
    this.ms = minMs;
  }
  next(): number {
    const d = this.ms;
    this.ms = Math.min(this.ms * 2, this.maxMs);
    return d;
  }
  reset(): void {
    this.ms = this.minMs;
  }
}
