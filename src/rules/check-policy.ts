// When the traffic rules are checked, given change events, a watcher that may be down, and failures. Pure: the
// clock is passed in, so the debounce and the rate limit are unit-tested without waiting.
//
// - A change event: one check after the changes stop for DEBOUNCE_MS (at most MAX_DELAY_MS after the first), so a
//   firewalld reload or `iptables -F` (many events) costs one check and a removed rule is back well within a second.
// - A busy host (Docker, kube-proxy or firewalld writing next to our rules): checks that find nothing wrong spend a
//   token; there are BURST tokens and one comes back per --iptables-resync, so sustained churn costs at most one check
//   per period. Checks that repair something spend none (a real removal is never made to wait), and nor do the checks
//   that events seen until GRACE_MS after our own fix cause (its own events, which may come in several batches and
//   late on a loaded host, must not spend the tokens a later removal needs). Fixes happen only when something was
//   really wrong, so a host that only churns never gets such a window. A delete in our own chain or table is one of
//   our rules removed (nobody else writes there): its check never waits for a token either, so on a loaded host, where
//   our own fix's events can come after GRACE_MS and spend the tokens, a removal still does not wait a resync period.
// - Polling every --iptables-resync while changes cannot be watched (iptables-legacy, the watcher down) or after a
//   failed check; otherwise a safety-net check every safetyNetMs (--reconcile-interval).

export type CheckOutcome = "clean" | "repaired" | "failed";

export interface CheckPolicyOptions {
  resyncMs: number;
  safetyNetMs: number;
  debounceMs?: number;
  maxDelayMs?: number;
  burst?: number;
  graceMs?: number;
}

export const DEBOUNCE_MS = 100;
export const MAX_DELAY_MS = 500;
export const BURST = 3;
export const GRACE_MS = 2000;

export class CheckPolicy {
  /** Changes cannot be watched right now: check every resyncMs. Set by the owner. */
  polling = false;
  private readonly debounceMs: number;
  private readonly maxDelayMs: number;
  private readonly burst: number;
  private readonly graceMs: number;
  private tokens: number;
  private refilledAt: number;
  /** A check is wanted at this time for events not yet covered by a read (null: none pending). */
  private dueAt: number | null = null;
  private firstEventAt = 0;
  /** Every pending event is one our own write caused (or the watcher's start): the check costs no token. */
  private pendingFree = true;
  /** A pending event removed one of our rules: the check runs without a token. */
  private pendingRemoval = false;
  private freeUntil = Number.NEGATIVE_INFINITY;
  private lastCheckAt: number;
  private retrying = false;
  private charge = false;

  constructor(
    private readonly o: CheckPolicyOptions,
    now: number,
  ) {
    this.debounceMs = o.debounceMs ?? DEBOUNCE_MS;
    this.maxDelayMs = o.maxDelayMs ?? MAX_DELAY_MS;
    this.burst = o.burst ?? BURST;
    this.graceMs = o.graceMs ?? GRACE_MS;
    this.tokens = this.burst;
    this.refilledAt = now;
    this.lastCheckAt = now;
  }

  /** A change that may concern our rules was seen; `removal`: it deleted one of them (our own chain or table). */
  event(now: number, removal = false): void {
    if (removal) this.pendingRemoval = true;
    const free = now <= this.freeUntil;
    if (this.dueAt === null) {
      this.firstEventAt = now;
      this.pendingFree = free;
    } else this.pendingFree &&= free;
    this.dueAt = Math.min(now + this.debounceMs, this.firstEventAt + this.maxDelayMs);
  }

  /** The watcher has (re)subscribed: whatever changed before that was not seen, so check now (no token). */
  watching(now: number): void {
    if (this.dueAt === null) this.pendingFree = true;
    this.dueAt = now;
  }

  /** When the next check is due (may be now or past). */
  nextAt(now: number): number {
    this.refill(now);
    let at = this.lastCheckAt + this.o.safetyNetMs;
    if (this.polling || this.retrying) at = Math.min(at, this.lastCheckAt + this.o.resyncMs);
    if (this.dueAt !== null) {
      const tokenAt = this.pendingFree || this.pendingRemoval || this.tokens >= 1 ? now : now + (1 - this.tokens) * this.o.resyncMs;
      at = Math.min(at, Math.max(this.dueAt, tokenAt));
    }
    return at;
  }

  /** A check starts: its read covers every event seen so far. */
  begin(now: number): void {
    const periodic = now >= this.lastCheckAt + (this.polling || this.retrying ? this.o.resyncMs : this.o.safetyNetMs);
    this.charge = this.dueAt !== null && !this.pendingFree && !this.pendingRemoval && !periodic;
    this.covered();
  }

  /** Our own fix starts writing (its events cost nothing) … */
  writing(): void {
    this.freeUntil = Number.POSITIVE_INFINITY;
  }

  /** … and is done; the read that verifies it starts next and covers every event seen until now. */
  written(now: number): void {
    this.freeUntil = now + this.graceMs;
    this.covered();
  }

  /** A read starts outside begin()/written() (the first install's read-back): it covers every event seen so far. */
  reading(): void {
    this.covered();
  }

  end(now: number, outcome: CheckOutcome): void {
    this.refill(now);
    if (this.charge && outcome !== "repaired") this.tokens = Math.max(0, this.tokens - 1);
    this.charge = false;
    this.retrying = outcome === "failed";
    this.lastCheckAt = now;
  }

  private covered(): void {
    this.dueAt = null;
    this.pendingFree = true;
    this.pendingRemoval = false;
  }

  private refill(now: number): void {
    this.tokens = Math.min(this.burst, this.tokens + (now - this.refilledAt) / this.o.resyncMs);
    this.refilledAt = now;
  }
}
