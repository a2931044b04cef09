// When traffic-rule checks run (no root, no waiting: the clock is an argument): debounce, the busy-host rate limit,
// free checks for repairs and our own writes, polling, retries and the safety net.
import { describe, expect, test } from "bun:test";
import { BURST, CheckPolicy, DEBOUNCE_MS, GRACE_MS, MAX_DELAY_MS } from "../../../src/rules/check-policy.ts";

const RESYNC = 5_000;
const SAFETY = 300_000;
const policy = () => new CheckPolicy({ resyncMs: RESYNC, safetyNetMs: SAFETY }, 0);

/** Runs every check that is due up to `until`, each taking 20 ms with the given outcome; returns their start times. */
function drive(p: CheckPolicy, from: number, until: number, outcome: "clean" | "repaired" | "failed" = "clean"): number[] {
  const starts: number[] = [];
  let now = from;
  for (let i = 0; i < 10_000 && now <= until; i++) {
    const at = p.nextAt(now);
    if (at > until) break;
    now = Math.max(now, at);
    p.begin(now);
    starts.push(now);
    now += 20;
    p.end(now, outcome);
  }
  return starts;
}

/** Every token spent on checks that found nothing (events at 0, 300, 600 ms). */
function spendTokens(p: CheckPolicy): void {
  for (let i = 0; i < BURST; i++) {
    p.event(i * 300);
    drive(p, i * 300, i * 300 + 299);
  }
}

describe("CheckPolicy", () => {
  test("idle: nothing until the safety net", () => {
    const p = policy();
    expect(p.nextAt(0)).toBe(SAFETY);
    expect(drive(p, 0, SAFETY - 1)).toEqual([]);
    expect(drive(p, 0, SAFETY)).toEqual([SAFETY]);
  });

  test("a burst of events (iptables -F, a firewalld reload) is one check after it goes quiet", () => {
    const p = policy();
    for (let t = 1000; t <= 1080; t += 10) p.event(t);
    expect(p.nextAt(1080)).toBe(1080 + DEBOUNCE_MS);
    expect(drive(p, 1080, 10_000)).toEqual([1080 + DEBOUNCE_MS]);
  });

  test("events that never stop still get a check MAX_DELAY_MS after the first", () => {
    const p = policy();
    for (let t = 1000; t < 1000 + MAX_DELAY_MS; t += 50) p.event(t);
    expect(p.nextAt(1000 + MAX_DELAY_MS - 50)).toBe(1000 + MAX_DELAY_MS);
  });

  test("a busy host: checks that find nothing cost at most BURST, then one per resync period", () => {
    const p = policy();
    const starts: number[] = [];
    // kube-proxy style churn: an event every 200 ms for 60 s.
    let now = 0;
    for (let t = 0; t < 60_000; t += 200) {
      p.event(t);
      const s = drive(p, Math.max(now, t), t + 199);
      starts.push(...s);
      if (s.length) now = s.at(-1)! + 20;
    }
    expect(starts.length).toBeLessThanOrEqual(BURST + Math.ceil(60_000 / RESYNC));
    expect(starts.length).toBeGreaterThanOrEqual(60_000 / RESYNC);
    // Once the burst (and what refilled meanwhile) is spent: one check per period.
    const gaps = starts.slice(BURST + 1).map((s, i) => s - starts[BURST + i]!);
    expect(gaps.length).toBeGreaterThan(5);
    for (const g of gaps) expect(g).toBeGreaterThanOrEqual(RESYNC - 200);
  });

  test("removals that are repaired never wait for a token, however many", () => {
    const p = policy();
    for (let i = 0; i < 10; i++) {
      const t = 1000 + i * 1000;
      p.event(t);
      expect(drive(p, t, t + 999, "repaired")).toEqual([t + DEBOUNCE_MS]);
    }
  });

  test("the events of our own fix cost no token, and a check started by them still runs at once", () => {
    const p = policy();
    // Spend every token on fruitless checks.
    spendTokens(p);
    // A removal: the check repairs (writing … written), our own events arrive after its verify read began.
    p.event(1000);
    expect(p.nextAt(1000)).toBeGreaterThan(1000 + RESYNC / 2); // no token left for an unknown event…
    p.begin(1000);
    p.writing();
    p.event(1010); // during the write: covered by the verify read
    p.written(1020);
    p.event(1030); // late delivery of our own write's events
    p.end(1040, "repaired");
    expect(p.nextAt(1040)).toBe(1030 + DEBOUNCE_MS); // … but this one is free
    expect(drive(p, 1040, 1040 + DEBOUNCE_MS)).toEqual([1030 + DEBOUNCE_MS]);
    // Several batches of our own events (one per table written), however late within the grace period: all free…
    p.event(1200);
    expect(p.nextAt(1200)).toBe(1200 + DEBOUNCE_MS);
    expect(drive(p, 1200, 1200 + DEBOUNCE_MS)).toEqual([1200 + DEBOUNCE_MS]);
    p.event(1020 + GRACE_MS - 10);
    expect(p.nextAt(1020 + GRACE_MS - 10)).toBe(1020 + GRACE_MS - 10 + DEBOUNCE_MS);
    drive(p, 1020 + GRACE_MS - 10, 1020 + GRACE_MS + DEBOUNCE_MS);
    // … and after the grace period an unknown event waits for a token again.
    const q = policy();
    spendTokens(q);
    q.begin(1000);
    q.writing();
    q.written(1020);
    q.end(1040, "repaired");
    q.event(1020 + GRACE_MS + 1);
    expect(q.nextAt(1020 + GRACE_MS + 1)).toBeGreaterThan(1020 + GRACE_MS + 1 + DEBOUNCE_MS);
  });

  test("a removal in our own chain or table is checked at once with every token spent (our own events came late)", () => {
    const p = policy();
    spendTokens(p);
    p.event(1000);
    expect(p.nextAt(1000)).toBeGreaterThan(1000 + RESYNC / 2); // an unknown event waits for a token
    p.event(1010, true); // … one of our rules deleted: not any more
    expect(p.nextAt(1010)).toBe(1010 + DEBOUNCE_MS);
    // Checked, found nothing wrong (it was put back meanwhile): no token spent on it.
    expect(drive(p, 1010, 1010 + DEBOUNCE_MS)).toEqual([1010 + DEBOUNCE_MS]);
    p.event(1200, true);
    expect(drive(p, 1200, 1200 + DEBOUNCE_MS)).toEqual([1200 + DEBOUNCE_MS]);
    // The flag goes with the check that covered it: the next unknown event waits for a token again.
    p.event(1400);
    expect(p.nextAt(1400)).toBeGreaterThan(1400 + RESYNC / 2);
  });

  test("events during a check's write and before its verify are covered by that check", () => {
    const p = policy();
    p.event(100);
    p.begin(200);
    p.writing();
    p.event(210);
    p.written(220);
    p.end(240, "repaired");
    expect(p.nextAt(240)).toBe(SAFETY + 240);
  });

  test("the watcher (re)subscribed: one check at once, free", () => {
    const p = policy();
    spendTokens(p);
    p.watching(2000);
    expect(drive(p, 2000, 2000)).toEqual([2000]);
  });

  test("polling while changes cannot be watched; retries every period after a failure", () => {
    const p = policy();
    p.polling = true;
    expect(drive(p, 0, 3 * RESYNC)).toEqual([RESYNC, 2 * RESYNC + 20, 3 * RESYNC + 40].filter((t) => t <= 3 * RESYNC));
    const q = policy();
    q.event(100);
    expect(drive(q, 100, 200, "failed")).toEqual([100 + DEBOUNCE_MS]);
    expect(q.nextAt(220)).toBe(220 + RESYNC);
    expect(drive(q, 220, 220 + RESYNC, "clean")).toEqual([220 + RESYNC]);
    expect(q.nextAt(240 + RESYNC)).toBe(240 + RESYNC + SAFETY);
  });
});
