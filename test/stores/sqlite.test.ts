import { Database } from "bun:sqlite";
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encode } from "cbor-x/encode";
import type { Store, WatchEvent } from "../../src/store.ts";
import { SqliteStore } from "../../stores/sqlite.ts";
import { runStoreConformance, WatchCollector, waitFor } from "./conformance.ts";

const tmp = mkdtempSync(join(tmpdir(), "flannel-sqlite-test-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const enc = new TextEncoder();
let dbCounter = 0;
const freshDbPath = () => join(tmp, `db-${++dbCounter}`, "leases.db");

/** Writes a change and a kv row by hand, bypassing the store's CBOR encoding (as a buggy or hostile writer could). */
function writeRawRow(path: string, key: string, record: Uint8Array, expiresAt: number | null = null): void {
  const db = new Database(path);
  try {
    db.run("PRAGMA busy_timeout = 5000");
    db.transaction(() => {
      const res = db.query("INSERT INTO changes(key, op, record, at) VALUES (?, 'put', ?, ?)").run(key, record, Date.now());
      db.query("INSERT OR REPLACE INTO kv(key, revision, expires_at, record) VALUES (?, ?, ?, ?)").run(
        key,
        Number(res.lastInsertRowid),
        expiresAt,
        record,
      );
    }).immediate();
  } finally {
    db.close(false);
  }
}

// ---- the shared conformance suite ----
{
  const path = freshDbPath();
  // The "server" for restartServer: an instance that is closed and reopened (with a WAL checkpoint in between)
  // while other instances keep watching and writing.
  let server: SqliteStore | null = null;
  afterAll(async () => {
    await server?.close();
  });
  runStoreConformance("sqlite", {
    async open(): Promise<Store> {
      const s = SqliteStore.open(path, { pollMs: 20 });
      server ??= SqliteStore.open(path);
      return s;
    },
    async restartServer() {
      await server?.close();
      const raw = new Database(path);
      try {
        raw.run("PRAGMA busy_timeout = 5000");
        raw.query("PRAGMA wal_checkpoint(TRUNCATE)").get();
      } finally {
        raw.close(false);
      }
      await Bun.sleep(200);
      server = SqliteStore.open(path);
    },
    async forceHistoryLoss(store) {
      (store as SqliteStore).trimHistory(0);
    },
    async writeRaw(key, bytes) {
      writeRawRow(path, key, bytes);
    },
  });
}

// ---- SQLite specifics ----

/** The next event that is not a progress report. */
async function nextEvent(it: AsyncIterator<WatchEvent>): Promise<IteratorResult<WatchEvent>> {
  for (;;) {
    const r = await it.next();
    if (r.done || r.value.type !== "progress") return r;
  }
}

const FIXTURE = join(import.meta.dir, "fixtures", "sqlite-worker.ts");

interface Worker {
  proc: ReturnType<typeof Bun.spawn>;
  out: () => string;
}

function spawnWorker(args: string[]): Worker {
  const proc = Bun.spawn([process.execPath, FIXTURE, ...args], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
  let text = "";
  void (async () => {
    const dec = new TextDecoder();
    for await (const chunk of proc.stdout as ReadableStream<Uint8Array>) text += dec.decode(chunk);
  })();
  return { proc, out: () => text };
}

/** Starts n worker processes, waits until all have opened the database, then releases them together. */
async function runWorkers(n: number, argsFor: (i: number) => string[]): Promise<unknown[]> {
  const workers: Worker[] = [];
  try {
    for (let i = 0; i < n; i++) workers.push(spawnWorker(argsFor(i)));
    await waitFor("all workers ready", () => (workers.every((w) => w.out().includes("ready")) ? true : undefined), 30_000);
    for (const w of workers) {
      const stdin = w.proc.stdin as import("bun").FileSink;
      stdin.write("go\n");
      await stdin.flush();
      await stdin.end();
    }
    const codes = await Promise.race([
      Promise.all(workers.map((w) => w.proc.exited)),
      Bun.sleep(60_000).then(() => {
        throw new Error("workers did not finish within 60 s");
      }),
    ]);
    expect(codes).toEqual(workers.map(() => 0));
    await Bun.sleep(50); // let the stdout readers drain
    return workers.map((w) =>
      JSON.parse(
        w
          .out()
          .split("\n")
          .find((l) => l.startsWith("{"))!,
      ),
    );
  } finally {
    for (const w of workers) if (w.proc.exitCode === null) w.proc.kill(); // only the PIDs we started
  }
}

describe("sqlite specifics", () => {
  test("open creates the parent directory, WAL mode and the schema", async () => {
    const path = join(tmp, "nested", "deeper", "x.db");
    const s = SqliteStore.open(path);
    try {
      expect(existsSync(path)).toBe(true);
      expect(s.kind).toBe("sqlite");
      expect(s.location).toBe(path);
      const raw = new Database(path, { readonly: true });
      try {
        expect((raw.query("PRAGMA journal_mode").get() as { journal_mode: string }).journal_mode).toBe("wal");
        const tables = (raw.query("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[]).map((t) => t.name);
        expect(tables).toEqual(expect.arrayContaining(["kv", "changes", "meta"]));
      } finally {
        raw.close(false);
      }
      // Opening again (another agent) is fine and sees the same data.
      await s.create("config", enc.encode("{}"));
      const again = SqliteStore.open(path);
      expect((await again.get("config"))!.revision).toBe(1);
      await again.close();
    } finally {
      await s.close();
    }
  });

  test("20 processes race create on one key: exactly one wins", async () => {
    const path = freshDbPath();
    const s = SqliteStore.open(path); // creates the file and schema before the workers start
    try {
      const results = (await runWorkers(20, (i) => [path, "race", "subnets/10.5.1.0-24", String(i)])) as {
        id: string;
        revision: number | null;
      }[];
      const winners = results.filter((r) => r.revision !== null);
      expect(winners.length).toBe(1);
      const got = (await s.get("subnets/10.5.1.0-24"))!;
      expect(new TextDecoder().decode(got.value)).toBe(`worker-${winners[0]!.id}`);
      expect(got.revision).toBe(winners[0]!.revision!);
    } finally {
      await s.close();
    }
  });

  test("20 processes create distinct keys: all revisions distinct, a watcher sees all in order", async () => {
    const path = freshDbPath();
    const s = SqliteStore.open(path, { pollMs: 20 });
    const w = new WatchCollector(s, "subnets/", 0);
    try {
      const results = (await runWorkers(20, (i) => [path, "distinct", "subnets/", `p${i}`, "25"])) as {
        id: string;
        revisions: (number | null)[];
      }[];
      const revs = results.flatMap((r) => r.revisions);
      expect(revs.every((r) => typeof r === "number" && r > 0)).toBe(true);
      expect(new Set(revs).size).toBe(500);
      const listed = await s.list("subnets/");
      expect(listed.items.length).toBe(500);
      expect(listed.revision).toBe(Math.max(...(revs as number[])));
      await w.until("500 puts from the workers", () => w.puts().length >= 500, 20_000);
      const seen = w.puts().map((kv) => kv.revision);
      expect(seen).toEqual([...(revs as number[])].sort((a, b) => a - b));
    } finally {
      await w.stop();
      await s.close();
    }
  });

  test("the change log stays bounded and a watcher left behind gets relist, then continues", async () => {
    const path = freshDbPath();
    const s = SqliteStore.open(path, { pollMs: 20, historyEntries: 100 });
    const ctl = new AbortController();
    try {
      const it = s.watch("k/", 0, ctl.signal)[Symbol.asyncIterator]();
      await s.create("k/first", enc.encode("1"));
      const first = await nextEvent(it);
      expect(first.value).toMatchObject({ type: "put", kv: { key: "k/first", revision: 1 } });
      // The consumer stops pulling while 300 writes go by: history is trimmed past its position.
      for (let i = 0; i < 300; i++) await s.create(`k/${i}`, enc.encode(String(i)));
      const raw = new Database(path, { readonly: true });
      try {
        const n = (raw.query("SELECT count(*) AS n FROM changes").get() as { n: number }).n;
        expect(n).toBeLessThanOrEqual(100 + 64);
        expect(n).toBeGreaterThanOrEqual(100);
      } finally {
        raw.close(false);
      }
      const next = await nextEvent(it);
      expect(next.value).toEqual({ type: "relist" });
      const r = (await s.create("k/after", enc.encode("after")))!;
      const after = await nextEvent(it);
      expect(after.value).toMatchObject({ type: "put", kv: { key: "k/after", revision: r } });
    } finally {
      ctl.abort();
      await s.close();
    }
  });

  test("another connection's commit wakes a watcher through file events, not a poll", async () => {
    const path = freshDbPath();
    const a = SqliteStore.open(path);
    const b = SqliteStore.open(path, { pollMs: 60_000, idlePollMs: 600_000 }); // polling would take a minute
    const w = new WatchCollector(b, "subnets/", 0);
    try {
      await Bun.sleep(200); // the watcher is asleep, waiting for an event
      for (let i = 1; i <= 3; i++) {
        await a.create(`subnets/10.0.${i}.0-24`, enc.encode("x"), { ttlMs: 60_000 });
        await w.until(`put ${i} seen`, () => w.puts().length === i, 2000);
      }
    } finally {
      await w.stop();
      await a.close();
      await b.close();
    }
  });

  test("another process writing as fast as it can: the watcher sees every write, the last ones included", async () => {
    // A commit landing while the watcher reads must neither count as seen nor go unnoticed: the last writes would
    // then wait for a commit that never comes (here: 10 min of idle look).
    const path = freshDbPath();
    const b = SqliteStore.open(path, { idlePollMs: 600_000 });
    const w = new WatchCollector(b, "subnets/", 0);
    const N = 1500;
    const script = join(tmp, "writer.ts");
    await Bun.write(
      script,
      `import { SqliteStore } from ${JSON.stringify(join(import.meta.dir, "../../stores/sqlite.ts"))};\n` +
        "const s = SqliteStore.open(process.argv[2]);\n" +
        "for (let i = 0; i < Number(process.argv[3]); i++) await s.create('subnets/w' + i, new TextEncoder().encode('x'));\n" +
        "await s.close();\n",
    );
    try {
      await Bun.sleep(200);
      const writer = Bun.spawn([process.execPath, script, path, String(N)], { stdout: "ignore", stderr: "inherit" });
      expect(await writer.exited).toBe(0);
      await w.until(`all ${N} puts`, () => w.puts().length === N, 5000);
    } finally {
      await w.stop();
      await b.close();
    }
  });

  test("expiry is reaped into the change log by a watcher in another instance", async () => {
    const path = freshDbPath();
    const a = SqliteStore.open(path);
    // No idle look for 10 min: the reap is timed by the soonest recorded expiry, not by polling.
    const b = SqliteStore.open(path, { pollMs: 20, idlePollMs: 600_000 });
    const w = new WatchCollector(b, "subnets/", 0);
    try {
      await a.create("subnets/10.0.0.0-24", enc.encode("x"), { ttlMs: 300 });
      await w.until("the expiry delete", () => w.deletes().length === 1, 5000);
      const raw = new Database(path, { readonly: true });
      try {
        expect(raw.query("SELECT op FROM changes ORDER BY revision").all()).toEqual([{ op: "put" }, { op: "delete" }]);
        expect((raw.query("SELECT count(*) AS n FROM kv").get() as { n: number }).n).toBe(0);
      } finally {
        raw.close(false);
      }
    } finally {
      await w.stop();
      await a.close();
      await b.close();
    }
  });

  test("records of the wrong shape: list and get skip them", async () => {
    const path = freshDbPath();
    const s = SqliteStore.open(path);
    try {
      await s.create("p/good", enc.encode("ok"));
      writeRawRow(path, "p/str", encode({ v: "not bytes", e: null }) as Uint8Array);
      writeRawRow(path, "p/exp", encode({ v: new Uint8Array([1]), e: "soon" }) as Uint8Array);
      writeRawRow(path, "p/mismatch", encode({ v: new Uint8Array([1]), e: null }) as Uint8Array, Date.now() + 60_000);
      writeRawRow(path, "p/num", encode(42) as Uint8Array);
      const listed = await s.list("p/");
      expect(listed.items.map((kv) => kv.key)).toEqual(["p/good"]);
      expect(await s.get("p/str")).toBeNull();
      expect(await s.get("p/mismatch")).toBeNull();
    } finally {
      await s.close();
    }
  });

  test("bad arguments are refused with a clear error", async () => {
    const s = SqliteStore.open(freshDbPath());
    try {
      await expect(s.create("", new Uint8Array())).rejects.toThrow(/invalid key/);
      await expect(s.create("a", new Uint8Array(), { ttlMs: 0 })).rejects.toThrow(/ttlMs/);
      await expect(s.update("a", new Uint8Array(), -1)).rejects.toThrow(/revision/);
      await expect(s.delete("a", 1.5)).rejects.toThrow(/revision/);
      await expect(s.watch("a/", Number.NaN, AbortSignal.timeout(1000))[Symbol.asyncIterator]().next()).rejects.toThrow(/afterRevision/);
      expect(() => SqliteStore.open(freshDbPath(), { pollMs: -1 })).toThrow(/pollMs/);
    } finally {
      await s.close();
    }
    await expect(s.get("a")).rejects.toThrow(/closed/);
  });
});
