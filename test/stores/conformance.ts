// One conformance suite for every Store (SQLite, etcd, NATS). A store's test file calls
//
//   runStoreConformance("etcd", { open, restartServer?, forceHistoryLoss?, writeRaw? })
//
// at top level; it registers `describe(name, …)` with bun:test. The harness owns the backing namespace (a database
// file, an etcd key prefix, a NATS bucket) and sets it up before the suite (beforeAll in the caller's file, or lazily
// in open()). Every test uses its own unique key prefix, so tests never see each other's keys.
// Optional hooks enable the tests that need them (server restart, history loss, raw writes); without the hook the test
// is not registered at all, so nothing shows as skipped. Every single-server suite has all three hooks; the cluster
// suites (test/stores/clusters.test.ts) run the rest, and their own fault tests cover restarts and lost members.

import { describe, expect, test } from "bun:test";
import { waitFor as pollFor } from "../../src/lab/netns.ts";
import { type KV, type ReadOptions, type Revision, type Store, UNREAD_EXPIRY, type WatchEvent } from "../../src/store.ts";

export interface StoreHarness {
  /**
   * Opens a NEW client (its own connection / Store instance) on the namespace shared by the whole suite.
   * Called many times (50 at once by the race test); the suite closes every store it opens.
   */
  open(): Promise<Store>;
  /**
   * Restarts the server behind the stores (etcd/NATS: stop and start the process on the same data and port;
   * SQLite: close and reopen the database file, checkpointing the WAL). Stores already open must recover by
   * themselves: a running watcher keeps delivering events, writes retried after the restart succeed.
   */
  restartServer?(): Promise<void>;
  /**
   * Destroys the history that watchers resume from (etcd: compact to the current revision; SQLite: trim the change
   * log; NATS: purge history), so a watch from an older revision must yield { type: "relist" }.
   */
  forceHistoryLoss?(store: Store): Promise<void>;
  /** Writes `bytes` as the stored value of logical `key`, bypassing the store's own encoding (a corrupt record). */
  writeRaw?(key: string, bytes: Uint8Array): Promise<void>;
}

const enc = new TextEncoder();
const dec = new TextDecoder();
const bytes = (s: string): Uint8Array => enc.encode(s);
const text = (b: Uint8Array): string => dec.decode(b);

let prefixCounter = 0;
/** A key prefix no other test (or earlier run against a reused server) uses. */
function uniquePrefix(label: string): string {
  prefixCounter += 1;
  return `conf-${label}-${Date.now().toString(36)}-${process.pid}-${prefixCounter}/`;
}

/** `test` when the hook is there, else a registration that registers nothing. */
function withHook(hook: unknown): (name: string, fn: () => Promise<void>) => void {
  return hook ? (name, fn) => test(name, fn) : () => {};
}

/** Polls `check` until it returns a non-undefined value or the deadline passes (then throws naming `what`). */
export function waitFor<T>(what: string, check: () => T | undefined | Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  return pollFor(what, timeoutMs, async () => await check(), 20);
}

/** Consumes a watch in the background into `events`; stop() aborts it and waits (bounded) for the loop to end. */
export class WatchCollector {
  /** Every event but progress reports (those are in `progress`). */
  readonly events: WatchEvent[] = [];
  readonly progress: Revision[] = [];
  error: unknown = undefined;
  private readonly ctl = new AbortController();
  private readonly done: Promise<void>;

  constructor(store: Store, prefix: string, afterRevision: Revision, opts?: ReadOptions) {
    this.done = (async () => {
      try {
        for await (const ev of store.watch(prefix, afterRevision, this.ctl.signal, opts)) {
          if (ev.type === "progress") this.progress.push(ev.revision);
          else this.events.push(ev);
        }
      } catch (err) {
        if (!this.ctl.signal.aborted) this.error = err;
      }
    })();
  }

  /** Waits until `pred` holds for the collected events. */
  async until(what: string, pred: (evs: WatchEvent[]) => boolean, timeoutMs = 10_000): Promise<void> {
    await waitFor(
      what,
      () => {
        if (this.error) throw new Error(`watch failed while waiting for ${what}: ${String(this.error)}`);
        return pred(this.events) ? true : undefined;
      },
      timeoutMs,
    );
  }

  puts(): KV[] {
    return this.events.flatMap((e) => (e.type === "put" ? [e.kv] : []));
  }

  deletes(): { key: string; revision: Revision }[] {
    return this.events.flatMap((e) => (e.type === "delete" ? [{ key: e.key, revision: e.revision }] : []));
  }

  async stop(): Promise<void> {
    this.ctl.abort();
    await Promise.race([this.done, Bun.sleep(5000)]);
  }
}

/** Retries a write that may fail while a server restarts (bounded). */
async function retrying<T>(what: string, fn: () => Promise<T>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${what} kept failing: ${String(err)}`);
      await Bun.sleep(100);
    }
  }
}

function byKey(items: KV[]): Map<string, KV> {
  return new Map(items.map((kv) => [kv.key, kv]));
}

export function runStoreConformance(name: string, h: StoreHarness): void {
  describe(name, () => {
    /** Opens a store and registers it for closing in the test's finally. */
    async function withStores<T>(fn: (open: () => Promise<Store>) => Promise<T>): Promise<T> {
      const opened: Store[] = [];
      const open = async () => {
        const s = await h.open();
        opened.push(s);
        return s;
      };
      try {
        return await fn(open);
      } finally {
        await Promise.allSettled(opened.map((s) => s.close()));
      }
    }

    test("get, list, create, update, delete and increasing revisions", async () => {
      await withStores(async (open) => {
        const s = await open();
        const p = uniquePrefix("basic");
        expect(await s.get(`${p}a`)).toBeNull();
        expect((await s.list(p)).items).toEqual([]);

        const r1 = await s.create(`${p}a`, bytes("one"));
        expect(r1).toBeGreaterThan(0);
        expect(await s.create(`${p}a`, bytes("again"))).toBeNull(); // exists
        const got = await s.get(`${p}a`);
        expect(got).not.toBeNull();
        expect(text(got!.value)).toBe("one");
        expect(got!.revision).toBe(r1!);
        expect(got!.key).toBe(`${p}a`);

        const r2 = await s.create(`${p}b`, bytes("two"));
        expect(r2!).toBeGreaterThan(r1!);
        const r3 = await s.update(`${p}a`, bytes("one'"), r1!);
        expect(r3!).toBeGreaterThan(r2!);
        expect(text((await s.get(`${p}a`))!.value)).toBe("one'");

        // A key outside the prefix (shares its start but not the slash) is not listed.
        const other = await s.create(`${p.slice(0, -1)}x/c`, bytes("other"));
        expect(other!).toBeGreaterThan(r3!);

        const listed = await s.list(p);
        expect(listed.items.map((kv) => kv.key).sort()).toEqual([`${p}a`, `${p}b`]);
        const m = byKey(listed.items);
        expect(m.get(`${p}a`)!.revision).toBe(r3!);
        expect(text(m.get(`${p}b`)!.value)).toBe("two");
        expect(listed.revision).toBeGreaterThanOrEqual(other!);

        expect(await s.delete(`${p}b`, r2!)).toBe(true);
        expect(await s.get(`${p}b`)).toBeNull();
        expect(await s.delete(`${p}b`, r2!)).toBe(false); // already gone
        expect(await s.update(`${p}b`, bytes("x"), r2!)).toBeNull(); // update never creates
        // A fresh create after a delete works and gets a newer revision.
        const r4 = await s.create(`${p}b`, bytes("two again"));
        expect(r4!).toBeGreaterThan(other!);
        const after = await s.list(p);
        expect(after.revision).toBeGreaterThanOrEqual(r4!);
        expect(after.revision).toBeGreaterThanOrEqual(listed.revision);
      });
    });

    test("revision 0 matches no key; bad arguments are errors naming the problem", async () => {
      await withStores(async (open) => {
        const s = await open();
        const key = `${uniquePrefix("args")}k`;
        const r1 = (await s.create(key, bytes("v")))!;
        expect(await s.update(key, bytes("x"), 0)).toBeNull();
        expect(await s.delete(key, 0)).toBe(false);
        expect(await s.update(`${key}-absent`, bytes("x"), 0)).toBeNull();
        expect(await s.delete(`${key}-absent`, 0)).toBe(false);
        expect((await s.get(key))!.revision).toBe(r1);
        await expect(s.create("", bytes("x"))).rejects.toThrow(/invalid key/);
        await expect(s.create(`${key}2`, bytes("x"), { ttlMs: 0 })).rejects.toThrow(/ttlMs/);
        await expect(s.create(`${key}2`, bytes("x"), { ttlMs: Number.NaN })).rejects.toThrow(/ttlMs/);
        await expect(s.create(`${key}2`, "text" as unknown as Uint8Array)).rejects.toThrow(/Uint8Array/);
        await expect(s.update(key, bytes("x"), -1)).rejects.toThrow(/revision/);
        await expect(s.delete(key, 1.5)).rejects.toThrow(/revision/);
        expect(await s.get(`${key}2`)).toBeNull(); // nothing was written by the refused calls
        expect(text((await s.get(key))!.value)).toBe("v");
      });
    });

    test("currentRevision is at least every write under the prefix, and the watch reports reaching it", async () => {
      await withStores(async (open) => {
        const s = await open();
        const p = uniquePrefix("rev");
        const start = await s.list(p);
        expect(await s.currentRevision(p)).toBeLessThanOrEqual(start.revision);
        const w = new WatchCollector(s, p, start.revision);
        try {
          const r1 = (await s.create(`${p}a`, bytes("1")))!;
          expect(await s.currentRevision(p)).toBeGreaterThanOrEqual(r1);
          const r2 = (await s.update(`${p}a`, bytes("2"), r1))!;
          expect(await s.currentRevision(p)).toBeGreaterThanOrEqual(r2);
          // Writes the watch does not report as events (another prefix; an unreadable record) must not leave it
          // looking behind: it reports progress past them.
          await s.create(`${p.slice(0, -1)}-other/x`, bytes("elsewhere"));
          if (h.writeRaw) await h.writeRaw(`${p}unreadable`, new Uint8Array([0xff, 0x00, 0xfe]));
          const target = await s.currentRevision(p);
          const position = () =>
            Math.max(0, ...w.progress, ...w.events.map((e) => (e.type === "put" ? e.kv.revision : e.type === "delete" ? e.revision : 0)));
          await w.until(`the watch to reach revision ${target}`, () => position() >= target);
        } finally {
          await w.stop();
        }
      });
    });

    test("values are bytes, returned exactly (binary, empty)", async () => {
      await withStores(async (open) => {
        const s = await open();
        const p = uniquePrefix("bytes");
        const bin = new Uint8Array(256).map((_, i) => i);
        await s.create(`${p}bin`, bin);
        await s.create(`${p}empty`, new Uint8Array(0));
        expect(Array.from((await s.get(`${p}bin`))!.value)).toEqual(Array.from(bin));
        expect((await s.get(`${p}empty`))!.value.length).toBe(0);
      });
    });

    test("create-if-absent: 50 concurrent clients, exactly one wins", async () => {
      await withStores(async (open) => {
        const clients = await Promise.all(Array.from({ length: 50 }, () => open()));
        const key = `${uniquePrefix("race")}k`;
        const results = await Promise.all(clients.map((c, i) => c.create(key, bytes(`client-${i}`), { ttlMs: 60_000 })));
        const winners = results.flatMap((r, i) => (r === null ? [] : [{ i, r }]));
        expect(winners.length).toBe(1);
        const got = await clients[0]!.get(key);
        expect(text(got!.value)).toBe(`client-${winners[0]!.i}`);
        expect(got!.revision).toBe(winners[0]!.r);
      });
    });

    test("update is compare-and-set on the revision", async () => {
      await withStores(async (open) => {
        const a = await open();
        const b = await open();
        const key = `${uniquePrefix("cas")}k`;
        const r1 = (await a.create(key, bytes("v1")))!;
        const r2 = await b.update(key, bytes("v2"), r1);
        expect(r2!).toBeGreaterThan(r1);
        expect(await a.update(key, bytes("stale"), r1)).toBeNull(); // a still holds r1
        expect(text((await a.get(key))!.value)).toBe("v2");
        // Two clients racing on the same revision: one wins.
        const both = await Promise.all([a.update(key, bytes("a"), r2!), b.update(key, bytes("b"), r2!)]);
        expect(both.filter((r) => r !== null).length).toBe(1);
      });
    });

    test("createRevision: set by create, kept by updates (get, list, watch), new after delete and re-create", async () => {
      await withStores(async (open) => {
        const a = await open();
        const prefix = uniquePrefix("crev");
        const key = `${prefix}k`;
        const w = new WatchCollector(a, prefix, (await a.list(prefix)).revision);
        try {
          const r1 = (await a.create(key, bytes("v1"), { ttlMs: 60_000 }))!;
          const r2 = (await a.update(key, bytes("v2"), r1, { ttlMs: 60_000 }))!;
          const r3 = (await a.update(key, bytes("v3"), r2))!;
          const got = (await a.get(key))!;
          expect(got.revision).toBe(r3);
          expect(got.createRevision).toBe(r1);
          expect((await a.list(prefix)).items[0]!.createRevision).toBe(r1);
          expect(await a.delete(key, r3)).toBe(true);
          const r4 = (await a.create(key, bytes("v4")))!;
          expect((await a.get(key))!.createRevision).toBe(r4);
          await w.until("4 puts", (evs) => evs.filter((e) => e.type === "put").length >= 4);
          const puts = w.events.flatMap((e) => (e.type === "put" ? [[e.kv.revision, e.kv.createRevision]] : []));
          expect(puts).toEqual([
            [r1, r1],
            [r2, r1],
            [r3, r1],
            [r4, r4],
          ]);
        } finally {
          await w.stop();
        }
      });
    });

    test("delete is compare-and-set on the revision", async () => {
      await withStores(async (open) => {
        const s = await open();
        const key = `${uniquePrefix("del")}k`;
        const r1 = (await s.create(key, bytes("v1")))!;
        const r2 = (await s.update(key, bytes("v2"), r1))!;
        expect(await s.delete(key, r1)).toBe(false);
        expect(await s.get(key)).not.toBeNull();
        expect(await s.delete(key, r2)).toBe(true);
        expect(await s.get(key)).toBeNull();
      });
    });

    test("reservations (no ttl) never expire and have expiresAt null", async () => {
      await withStores(async (open) => {
        const s = await open();
        const p = uniquePrefix("resv");
        const start = await s.list(p);
        const w = new WatchCollector(s, p, start.revision);
        try {
          const r = (await s.create(`${p}r`, bytes("reserved")))!;
          expect((await s.get(`${p}r`))!.expiresAt).toBeNull();
          expect((await s.list(p)).items[0]!.expiresAt).toBeNull();
          await w.until("the reservation's put event", (evs) => evs.some((e) => e.type === "put"));
          expect(w.puts()[0]!.expiresAt).toBeNull();
          // update without ttl keeps it permanent; with ttl it gets an expiry
          const r2 = (await s.update(`${p}r`, bytes("still"), r))!;
          expect((await s.get(`${p}r`))!.expiresAt).toBeNull();
          const before = Date.now();
          await s.update(`${p}r`, bytes("leased"), r2, { ttlMs: 60_000 });
          const exp = (await s.get(`${p}r`))!.expiresAt!;
          expect(exp).toBeGreaterThanOrEqual(before + 55_000);
          expect(exp).toBeLessThanOrEqual(Date.now() + 65_000);
        } finally {
          await w.stop();
        }
      });
    });

    test("reads with { expiry: false }: the same records, null for no expiry, a time or UNREAD_EXPIRY for one", async () => {
      await withStores(async (open) => {
        const s = await open();
        const other = await open(); // nothing cached about the writer's leases
        const p = uniquePrefix("noexp");
        const start = await other.list(p);
        const w = new WatchCollector(other, p, start.revision, { expiry: false });
        try {
          const before = Date.now();
          await s.create(`${p}lease`, bytes("leased"), { ttlMs: 60_000 });
          await s.create(`${p}resv`, bytes("reserved"));
          const expiresOk = (e: number | null) => e === UNREAD_EXPIRY || (e !== null && e >= before + 55_000 && e <= Date.now() + 65_000);
          const listed = byKey((await other.list(p, { expiry: false })).items);
          expect([...listed.keys()].sort()).toEqual([`${p}lease`, `${p}resv`]);
          expect(listed.get(`${p}resv`)!.expiresAt).toBeNull();
          expect(expiresOk(listed.get(`${p}lease`)!.expiresAt)).toBe(true);
          expect(new TextDecoder().decode(listed.get(`${p}lease`)!.value)).toBe("leased");
          await w.until("both put events", (evs) => evs.filter((e) => e.type === "put").length === 2);
          const puts = byKey(w.puts());
          expect(puts.get(`${p}resv`)!.expiresAt).toBeNull();
          expect(expiresOk(puts.get(`${p}lease`)!.expiresAt)).toBe(true);
          // The default read still has the exact time.
          const exact = byKey((await other.list(p)).items).get(`${p}lease`)!.expiresAt!;
          expect(exact).toBeGreaterThanOrEqual(before + 55_000);
          expect(exact).toBeLessThanOrEqual(Date.now() + 65_000);
        } finally {
          await w.stop();
        }
      });
    });

    test("expiry: expired records are absent, can be re-created, and watchers see a delete", async () => {
      await withStores(async (open) => {
        const s = await open();
        const other = await open();
        const p = uniquePrefix("ttl");
        const start = await s.list(p);
        const w = new WatchCollector(other, p, start.revision);
        try {
          const before = Date.now();
          const rTtl = (await s.create(`${p}lease`, bytes("short"), { ttlMs: 1500 }))!;
          const rKeep = (await s.create(`${p}renewed`, bytes("short too"), { ttlMs: 1500 }))!;
          await s.create(`${p}reservation`, bytes("forever"));
          // Updating without ttl makes the record permanent (a new ttl replaces the old expiry, none = never).
          expect(await s.update(`${p}renewed`, bytes("kept"), rKeep)).not.toBeNull();

          const got = (await s.get(`${p}lease`))!;
          expect(got.expiresAt).not.toBeNull();
          expect(got.expiresAt!).toBeGreaterThanOrEqual(before + 1000);
          expect(got.expiresAt!).toBeLessThanOrEqual(Date.now() + 3000);
          expect((await s.list(p)).items.length).toBe(3);

          await waitFor("the lease to expire for get()", async () => ((await s.get(`${p}lease`)) === null ? true : undefined));
          expect(Date.now()).toBeGreaterThanOrEqual(before + 1000); // not before its time
          expect(await other.get(`${p}lease`)).toBeNull();
          const listed = await s.list(p);
          expect(listed.items.map((kv) => kv.key).sort()).toEqual([`${p}renewed`, `${p}reservation`]);

          // Expired: CAS on the old revision fails.
          expect(await s.update(`${p}lease`, bytes("too late"), rTtl)).toBeNull();
          expect(await s.delete(`${p}lease`, rTtl)).toBe(false);

          await w.until("a delete event for the expired lease", (evs) => evs.some((e) => e.type === "delete" && e.key === `${p}lease`));
          const del = w.deletes().filter((d) => d.key === `${p}lease`);
          expect(del.length).toBe(1);

          // Create over the expired key succeeds with a newer revision; the watcher sees it after the delete.
          const rNew = (await other.create(`${p}lease`, bytes("mine now"), { ttlMs: 60_000 }))!;
          expect(rNew).toBeGreaterThan(rTtl);
          expect(text((await s.get(`${p}lease`))!.value)).toBe("mine now");
          await w.until("the re-created lease's put", (evs) => evs.some((e) => e.type === "put" && e.kv.revision === rNew));
          const keyEvents = w.events.filter(
            (e) => (e.type === "put" && e.kv.key === `${p}lease`) || (e.type === "delete" && e.key === `${p}lease`),
          );
          expect(keyEvents.map((e) => e.type)).toEqual(["put", "delete", "put"]);
          // The renewed record and the reservation never got a delete.
          expect(w.deletes().filter((d) => d.key !== `${p}lease`)).toEqual([]);
        } finally {
          await w.stop();
        }
      });
    });

    test("watch: 200 writes from 4 writers arrive in order, exactly once, with the right values", async () => {
      await withStores(async (open) => {
        const watcherStore = await open();
        const writers = await Promise.all(Array.from({ length: 4 }, () => open()));
        const p = uniquePrefix("order");
        const start = await watcherStore.list(p);
        const w = new WatchCollector(watcherStore, p, start.revision);
        try {
          // Each writer: 20 creates, 20 updates, 10 deletes = 50 writes; 200 in all, interleaved.
          const written = new Map<Revision, { key: string; value: string }>();
          const deleted: string[] = [];
          await Promise.all(
            writers.map(async (st, wi) => {
              const revs = new Map<string, Revision>();
              for (let i = 0; i < 20; i++) {
                const key = `${p}w${wi}-${i}`;
                const value = `w${wi} create ${i}`;
                const r = await st.create(key, bytes(value));
                if (r === null) throw new Error(`create ${key} failed`);
                revs.set(key, r);
                written.set(r, { key, value });
              }
              for (let i = 0; i < 20; i++) {
                const key = `${p}w${wi}-${i}`;
                const value = `w${wi} update ${i}`;
                const r = await st.update(key, bytes(value), revs.get(key)!);
                if (r === null) throw new Error(`update ${key} failed`);
                revs.set(key, r);
                written.set(r, { key, value });
              }
              for (let i = 0; i < 10; i++) {
                const key = `${p}w${wi}-${i}`;
                if (!(await st.delete(key, revs.get(key)!))) throw new Error(`delete ${key} failed`);
                deleted.push(key);
              }
            }),
          );
          expect(written.size).toBe(160); // distinct revisions for all puts
          await w.until("all 160 puts and 40 deletes", () => w.puts().length >= 160 && w.deletes().length >= 40, 20_000);
          await Bun.sleep(200); // anything extra (a duplicate) would show up now
          expect(w.events.some((e) => e.type === "relist")).toBe(false);

          const revs = w.events.map((e) => (e.type === "put" ? e.kv.revision : e.type === "delete" ? e.revision : -1));
          for (let i = 1; i < revs.length; i++) expect(revs[i]!).toBeGreaterThan(revs[i - 1]!);
          expect(revs[0]!).toBeGreaterThan(start.revision);

          const puts = w.puts();
          expect(puts.length).toBe(160);
          for (const kv of puts) {
            const want = written.get(kv.revision);
            expect(want).toBeDefined();
            expect(kv.key).toBe(want!.key);
            expect(text(kv.value)).toBe(want!.value);
            expect(kv.expiresAt).toBeNull();
          }
          const dels = w.deletes();
          expect(dels.length).toBe(40);
          expect(dels.map((d) => d.key).sort()).toEqual([...deleted].sort());
          // Each delete comes after the last put of its key.
          for (const d of dels) {
            const lastPut = Math.max(...puts.filter((kv) => kv.key === d.key).map((kv) => kv.revision));
            expect(d.revision).toBeGreaterThan(lastPut);
          }
          // The final list agrees with the event stream.
          const final = await watcherStore.list(p);
          expect(final.items.length).toBe(40);
        } finally {
          await w.stop();
        }
      });
    });

    test("watch from a past revision replays what happened after it", async () => {
      await withStores(async (open) => {
        const s = await open();
        const p = uniquePrefix("replay");
        const r1 = (await s.create(`${p}a`, bytes("1")))!;
        const r2 = (await s.create(`${p}b`, bytes("2")))!;
        const r3 = (await s.update(`${p}a`, bytes("3"), r1))!;
        const w = new WatchCollector(s, p, r1);
        try {
          await w.until("the two writes after r1", () => w.puts().length >= 2);
          expect(w.puts().map((kv) => kv.revision)).toEqual([r2, r3]);
        } finally {
          await w.stop();
        }
      });
    });

    withHook(h.restartServer)("watch resumes across a server restart", async () => {
      await withStores(async (open) => {
        const watcherStore = await open();
        const writer = await open();
        const p = uniquePrefix("restart");
        const start = await watcherStore.list(p);
        const w = new WatchCollector(watcherStore, p, start.revision);
        try {
          const expected = new Set<Revision>();
          for (let i = 0; i < 5; i++) expected.add((await writer.create(`${p}before-${i}`, bytes(`b${i}`)))!);
          await w.until("the writes before the restart", () => w.puts().length >= 5);

          // Writes race the restart; any that fail are retried until the server is back.
          const during = (async () => {
            for (let i = 0; i < 5; i++) {
              const key = `${p}during-${i}`;
              const r = await retrying(`create ${key}`, async () => {
                const res = await writer.create(key, bytes(`d${i}`));
                return res ?? (await writer.get(key))!.revision; // a retry after a lost reply finds its own write
              });
              expected.add(r);
              await Bun.sleep(50);
            }
          })();
          await h.restartServer!();
          await during;
          for (let i = 0; i < 5; i++) {
            expected.add(await retrying(`create after-${i}`, async () => (await writer.create(`${p}after-${i}`, bytes(`a${i}`)))!));
          }
          await w.until(
            "all 15 writes after the restart",
            () => [...expected].every((r) => w.puts().some((kv) => kv.revision === r) || w.events.some((e) => e.type === "relist")),
            30_000,
          );
          if (w.events.some((e) => e.type === "relist")) {
            // Allowed: the store said it lost track; the list must then hold everything.
            const listed = await watcherStore.list(p);
            expect(listed.items.length).toBe(15);
          } else {
            const revs = w.puts().map((kv) => kv.revision);
            expect(new Set(revs).size).toBe(revs.length); // no duplicates
            for (let i = 1; i < revs.length; i++) expect(revs[i]!).toBeGreaterThan(revs[i - 1]!);
          }
        } finally {
          await w.stop();
        }
      });
    });

    withHook(h.forceHistoryLoss)("relist after history loss, then the watch continues", async () => {
      await withStores(async (open) => {
        const s = await open();
        const p = uniquePrefix("relist");
        const r1 = (await s.create(`${p}a`, bytes("a1")))!;
        const seen = await s.list(p);
        await s.create(`${p}b`, bytes("b1"));
        await s.update(`${p}a`, bytes("a2"), r1);
        await h.forceHistoryLoss!(s);

        const w = new WatchCollector(s, p, seen.revision);
        try {
          await w.until("a relist event", (evs) => evs.some((e) => e.type === "relist"));
          expect(w.events[0]!.type).toBe("relist");
          const listed = await s.list(p);
          const m = byKey(listed.items);
          expect([...m.keys()].sort()).toEqual([`${p}a`, `${p}b`]);
          expect(text(m.get(`${p}a`)!.value)).toBe("a2");
          expect(text(m.get(`${p}b`)!.value)).toBe("b1");
          // The watch goes on by itself after the relist.
          const rc = (await s.create(`${p}c`, bytes("c1")))!;
          await w.until("the put written after the relist", () => w.puts().some((kv) => kv.revision === rc));
          expect(text(w.puts().find((kv) => kv.revision === rc)!.value)).toBe("c1");
        } finally {
          await w.stop();
        }
      });
    });

    withHook(h.writeRaw)("corrupt values are skipped by list and watch", async () => {
      await withStores(async (open) => {
        const s = await open();
        const p = uniquePrefix("corrupt");
        const start = await s.list(p);
        const w = new WatchCollector(s, p, start.revision);
        try {
          await s.create(`${p}good1`, bytes("g1"));
          await h.writeRaw!(`${p}bad`, new Uint8Array([0xff, 0x00, 0xfe, 0x13, 0x37]));
          const r2 = (await s.create(`${p}good2`, bytes("g2")))!;
          const listed = await s.list(p);
          const keys = listed.items.map((kv) => kv.key);
          expect(keys).toContain(`${p}good1`);
          expect(keys).toContain(`${p}good2`);
          expect(listed.items.every((kv) => kv.value instanceof Uint8Array)).toBe(true);
          // A store with an encoding of its own skips what is not in it (null); one with opaque values (etcd) returns them.
          const bad = await s.get(`${p}bad`);
          if (bad !== null) expect(Array.from(bad.value)).toEqual([0xff, 0x00, 0xfe, 0x13, 0x37]);
          expect(await s.create(`${p}bad`, bytes("mine"))).toBeNull(); // and its key counts as taken
          await w.until("the good put after the corrupt one", () => w.puts().some((kv) => kv.revision === r2));
          expect(w.error).toBeUndefined();
          expect(w.puts().filter((kv) => kv.key.startsWith(`${p}good`)).length).toBe(2);
          // Garbage written over a live key is skipped too: no delete (a peer keeps its last good state).
          await h.writeRaw!(`${p}good1`, new Uint8Array([0xff, 0x00, 0xfe]));
          const r3 = (await s.create(`${p}good3`, bytes("g3")))!;
          await w.until("the put after the corrupt overwrite", () => w.puts().some((kv) => kv.revision === r3));
          expect(w.deletes().map((d) => d.key)).not.toContain(`${p}good1`);
        } finally {
          await w.stop();
        }
      });
    });

    test("close() ends running watches", async () => {
      const s = await h.open();
      const p = uniquePrefix("close");
      const ctl = new AbortController();
      let ended = false;
      const loop = (async () => {
        try {
          for await (const _ of s.watch(p, (await s.list(p)).revision, ctl.signal)) {
            // no events expected
          }
        } catch {
          // a store may end a watch on close with an error; either way it must end
        }
        ended = true;
      })();
      try {
        await Bun.sleep(100);
        await s.close();
        await waitFor("the watch to end after close()", () => (ended ? true : undefined), 5000);
      } finally {
        ctl.abort();
        await Promise.race([loop, Bun.sleep(1000)]);
        await s.close().catch(() => {});
      }
    });
  });
}
