// The guarantees written once above the store interface (src/peer-watch.ts), on a real SQLite store behind a thin
// wrapper that plays the failure: a watch that stays open but stops delivering, and a store that stops answering.
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseNetworkConfig } from "../../src/config.ts";
import { encodeLeaseAttrs } from "../../src/lease.ts";
import { type PeerEvent, watchPeers } from "../../src/peer-watch.ts";
import { type Store, StoreUnavailableError, type WatchEvent } from "../../src/store.ts";
import { StoreHealth } from "../../src/store-health.ts";
import { SqliteStore } from "../../stores/sqlite.ts";

const dir = mkdtempSync(join(tmpdir(), "fb-sup-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const val = (ip: string) => encodeLeaseAttrs({ publicIP: ip, publicIPv6: null, backendType: "host-gw" });
const OWN = "subnets/10.5.1.0-24";

/** Pulls events from `it` into `out` in the background until `signal` aborts. */
function pump(it: AsyncGenerator<PeerEvent>, out: PeerEvent[], signal: AbortSignal): Promise<void> {
  return (async () => {
    while (!signal.aborted) {
      const r = await it.next();
      if (r.done) return;
      out.push(r.value);
    }
  })().catch(() => {});
}

async function until(what: string, pred: () => boolean, ms = 8000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20);
  }
}

/** The store with its first watch frozen after `freezeAfter` events: open, silent, until aborted. */
function freezingFirstWatch(s: Store, freezeAfter: number): Store & { watches: number } {
  const w = {
    ...delegate(s),
    watches: 0,
    watch(prefix: string, after: number, signal: AbortSignal): AsyncIterable<WatchEvent> {
      const n = ++w.watches;
      if (n > 1) return s.watch(prefix, after, signal);
      return (async function* () {
        let seen = 0;
        for await (const ev of s.watch(prefix, after, signal)) {
          if (seen++ >= freezeAfter) break;
          yield ev;
        }
        await new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
      })();
    },
  };
  return w;
}

/** The store, refusing list/get/currentRevision while `down` (with `watch`, its watch fails then too). */
function unreachable(s: Store, opts: { watch?: boolean } = {}): Store & { down: boolean } {
  const refuse = () => {
    if (f.down) throw new StoreUnavailableError("test: store unreachable");
  };
  const f = {
    ...delegate(s),
    down: false,
    list: async (p: string) => (refuse(), s.list(p)),
    get: async (k: string) => (refuse(), s.get(k)),
    currentRevision: async (p: string) => (refuse(), s.currentRevision(p)),
    watch: (p: string, a: number, sig: AbortSignal): AsyncIterable<WatchEvent> =>
      opts.watch
        ? (async function* () {
            for await (const ev of s.watch(p, a, sig)) {
              if (f.down) throw new StoreUnavailableError("test: watch lost");
              yield ev;
            }
          })()
        : s.watch(p, a, sig),
  };
  return f;
}

function delegate(s: Store): Store {
  return {
    kind: s.kind,
    location: s.location,
    get: (k) => s.get(k),
    list: (p) => s.list(p),
    create: (k, v, o) => s.create(k, v, o),
    update: (k, v, r, o) => s.update(k, v, r, o),
    delete: (k, r) => s.delete(k, r),
    watch: (p, a, sig) => s.watch(p, a, sig),
    currentRevision: (p) => s.currentRevision(p),
    close: () => s.close(),
  };
}

test("a watch that stays open but stops delivering is detected and restarted; the new lease arrives", async () => {
  const s = SqliteStore.open(join(dir, "stale.db"), { pollMs: 20 });
  const ac = new AbortController();
  const health = new StoreHealth();
  try {
    await s.create(OWN, val("192.0.2.1"), { ttlMs: 60_000 });
    const wrapped = freezingFirstWatch(s, 0);
    const evs: PeerEvent[] = [];
    const done = pump(
      watchPeers(wrapped, () => OWN, ac.signal, undefined, { health, checkIntervalMs: 100, staleAfterMs: 400 }),
      evs,
      ac.signal,
    );
    await until("the first sync", () => evs.some((e) => e.type === "synced"));
    await s.create("subnets/10.5.2.0-24", val("192.0.2.2"), { ttlMs: 60_000 });
    await until("the new peer through a restarted watch", () => evs.some((e) => e.type === "added" && e.key === "subnets/10.5.2.0-24"));
    expect(health.watchRestarts.stale).toBeGreaterThanOrEqual(1);
    expect(wrapped.watches).toBeGreaterThanOrEqual(2);
    expect(health.behindSince).toBeNull();
    ac.abort();
    await done;
  } finally {
    ac.abort();
    await s.close();
  }
});

test("a caught-up quiet watch is never restarted, even while other prefixes change", async () => {
  const s = SqliteStore.open(join(dir, "quiet.db"), { pollMs: 20 });
  const ac = new AbortController();
  const health = new StoreHealth();
  try {
    const evs: PeerEvent[] = [];
    const done = pump(
      watchPeers(s, () => OWN, ac.signal, undefined, { health, checkIntervalMs: 50, staleAfterMs: 200 }),
      evs,
      ac.signal,
    );
    await until("the first sync", () => evs.some((e) => e.type === "synced"));
    for (let i = 0; i < 20; i++) {
      await s.create(`other/${i}`, val("192.0.2.9"));
      await Bun.sleep(30);
    }
    await Bun.sleep(300);
    expect(health.watchRestarts).toEqual({ stale: 0, error: 0, ended: 0 });
    ac.abort();
    await done;
  } finally {
    ac.abort();
    await s.close();
  }
});

test("an outage never removes a peer: a delete seen while the store is unreachable waits for the store's word after it", async () => {
  const s = SqliteStore.open(join(dir, "outage.db"), { pollMs: 20 });
  const ac = new AbortController();
  const health = new StoreHealth();
  health.removalHoldMs = 600;
  const flaky = unreachable(s);
  try {
    await s.create(OWN, val("192.0.2.1"), { ttlMs: 60_000 });
    const r2 = (await s.create("subnets/10.5.2.0-24", val("192.0.2.2"), { ttlMs: 60_000 }))!;
    await s.create("subnets/10.5.3.0-24", val("192.0.2.3"), { ttlMs: 60_000 });
    const evs: PeerEvent[] = [];
    const done = pump(
      watchPeers(flaky, () => OWN, ac.signal, undefined, { health, checkIntervalMs: 50, staleAfterMs: 5000 }),
      evs,
      ac.signal,
    );
    await until("the first sync with two peers", () => evs.some((e) => e.type === "synced" && e.peers === 2));

    flaky.down = true;
    await until("the outage to be noticed", () => !health.up);
    // A deletion reaches the watch during the outage (as a store synthesising an expiry by its own clock would).
    await s.delete("subnets/10.5.2.0-24", r2);
    await Bun.sleep(300);
    expect(evs.filter((e) => e.type === "removed")).toEqual([]);
    expect(health.degraded()).toContain("store unreachable");

    flaky.down = false;
    const backAt = Date.now();
    await until("the store to be reachable again", () => health.up);
    // Right after the outage: re-listed (nothing added or removed yet), removals still held.
    await Bun.sleep(200);
    expect(evs.filter((e) => e.type === "removed")).toEqual([]);
    await until("the removal after the hold", () => evs.some((e) => e.type === "removed"), 5000);
    expect(Date.now() - backAt).toBeGreaterThanOrEqual(600);
    const removed = evs.filter((e) => e.type === "removed").map((e) => (e as { key: string }).key);
    expect(removed).toEqual(["subnets/10.5.2.0-24"]); // the peer that is still there stays
    expect(health.errors).toBeGreaterThan(0);
    ac.abort();
    await done;
  } finally {
    ac.abort();
    await s.close();
  }
});

test("under the usable filter, the re-list after an outage diffs against the filter's records: each change passed on once", async () => {
  const s = SqliteStore.open(join(dir, "outage-usable.db"), { pollMs: 20 });
  const ac = new AbortController();
  const health = new StoreHealth();
  health.removalHoldMs = 400;
  // While down, the store neither answers nor delivers: everything written meanwhile reaches us only by the re-list.
  const flaky = unreachable(s, { watch: true });
  const cfg = parseNetworkConfig('{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}');
  const ttl = { ttlMs: 60_000 };
  try {
    await s.create(OWN, val("192.0.2.1"), ttl);
    const r2 = (await s.create("subnets/10.5.2.0-24", val("192.0.2.2"), ttl))!;
    const r3 = (await s.create("subnets/10.5.3.0-24", val("192.0.2.3"), ttl))!;
    await s.create("subnets/10.5.4.0-24", val("192.0.2.4"), ttl);
    await s.create("subnets/10.5.5.0-25", val("192.0.2.55"), ttl); // not this network's SubnetLen: never a peer
    const evs: PeerEvent[] = [];
    const it = watchPeers(
      flaky,
      () => OWN,
      ac.signal,
      { config: cfg, own: () => null },
      { health, checkIntervalMs: 50, staleAfterMs: 5000 },
    );
    const done = pump(it, evs, ac.signal);
    await until("the first sync with three peers", () => evs.some((e) => e.type === "synced" && e.peers === 3));
    evs.length = 0;

    flaky.down = true;
    await until("the outage to be noticed", () => !health.up);
    await s.delete("subnets/10.5.2.0-24", r2);
    await s.update("subnets/10.5.3.0-24", val("192.0.2.33"), r3, ttl);
    await s.create("subnets/10.5.6.0-24", val("192.0.2.6"), ttl);
    await s.create("subnets/10.5.7.0-25", val("192.0.2.77"), ttl);
    flaky.down = false;
    await until("the removal after the hold", () => evs.some((e) => e.type === "removed"), 5000);
    await Bun.sleep(300); // any later re-list passes nothing more on
    const seen = evs.flatMap((e) =>
      e.type === "added" ? [`added ${e.key} ${e.lease.attrs.publicIP}`] : e.type === "removed" ? [`removed ${e.key}`] : [],
    );
    expect(seen.sort()).toEqual([
      "added subnets/10.5.3.0-24 192.0.2.33",
      "added subnets/10.5.6.0-24 192.0.2.6",
      "removed subnets/10.5.2.0-24",
    ]);
    expect(evs.filter((e) => e.type === "synced").at(-1)).toEqual({ type: "synced", peers: 3 });
    ac.abort();
    await done;
  } finally {
    ac.abort();
    await s.close();
  }
});
