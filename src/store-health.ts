// The store's health as the agent sees it, one per process (an agent has one store): reachable or not, errors,
// watch restarts and lag. Stores report connection changes and watch breaks here; the peer watch's supervisor
// (src/peer-watch.ts) reports what its checks find; /metrics, /readyz and the systemd STATUS line read it.
//
// It also answers the one question the data plane asks: may a peer be removed now? Only on the store's word while
// it is reachable, the watch is caught up, and the store has been reachable for a while after an outage (holders
// whose renewals fell into the outage are re-creating their leases then: their records are not gone).

import { logger } from "./log.ts";

const log = logger("store");

export type WatchRestartReason = "stale" | "error" | "ended";

/** How long after an outage removals wait (a holder retries its renewal at most every 60 s: LeaseKeeper). */
export const DEFAULT_REMOVAL_HOLD_MS = 65_000;

export class StoreHealth {
  /** Reachable at the last look. */
  up = true;
  /** Since when the store is in its current state (epoch ms). */
  since = Date.now();
  /** When the last outage ended (epoch ms), or null if there has been none. */
  outageEndedAt: number | null = null;
  /** Why it is down (for /readyz and STATUS). */
  reason = "";
  /** Failed store operations and watch breaks. */
  errors = 0;
  readonly watchRestarts: Record<WatchRestartReason, number> = { stale: 0, error: 0, ended: 0 };
  /** Since when the watch is known to be behind the store (epoch ms), or null when caught up. */
  behindSince: number | null = null;
  removalHoldMs = DEFAULT_REMOVAL_HOLD_MS;
  private readonly listeners = new Set<() => void>();

  /** Called on every change between reachable and unreachable (for the systemd STATUS line). */
  onChange(fn: () => void): void {
    this.listeners.add(fn);
  }

  private changed(): void {
    for (const fn of this.listeners) fn();
  }

  /** A store operation or a watch failed (counted; logged by whoever saw it). */
  error(): void {
    this.errors++;
  }

  /** The store answered. Logs the end of an outage once. */
  reachable(): void {
    if (this.up) return;
    const now = Date.now();
    log.info(`store reachable again after ${Math.round((now - this.since) / 1000)} s; peers are re-listed`);
    this.up = true;
    this.since = now;
    this.outageEndedAt = now;
    this.reason = "";
    this.changed();
  }

  /** The store did not answer. Logs the start of an outage once; peers and routes stay as they are. */
  unreachable(reason: string): void {
    if (!this.up) return;
    log.warn(`store unreachable (${reason}); keeping every peer and route until it is back`);
    this.up = false;
    this.since = Date.now();
    this.reason = reason;
    this.changed();
  }

  watchRestarted(reason: WatchRestartReason): void {
    this.watchRestarts[reason]++;
  }

  lagSeconds(now = Date.now()): number {
    return this.behindSince === null ? 0 : Math.max(0, (now - this.behindSince) / 1000);
  }

  /** Peers may be removed now: reachable, caught up, and past the hold after the last outage. */
  removalsAllowed(now = Date.now()): boolean {
    if (!this.up || this.behindSince !== null) return false;
    return this.outageEndedAt === null || now - this.outageEndedAt >= this.removalHoldMs;
  }

  /** "" when all is well, else one line on what is degraded (for /readyz and systemd STATUS). */
  degraded(now = Date.now()): string {
    if (!this.up) return `store unreachable for ${Math.round((now - this.since) / 1000)} s (${this.reason}); peers and routes kept`;
    if (this.behindSince !== null && now - this.behindSince > 5000) return `store watch behind for ${Math.round(this.lagSeconds(now))} s`;
    return "";
  }
}

/** The process's store health. */
export const storeHealth = new StoreHealth();
