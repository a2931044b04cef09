// Issue 12: the SQLite file deleted and re-created (rm + config put) under running stores and agents. They notice
// the new inode, reopen, say so in the log, re-list their watches, and the agents re-create their leases in the
// new file instead of working on in the deleted one.
import { afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { WatchEvent } from "../../src/store.ts";
import { SqliteStore } from "../../stores/sqlite.ts";
import { AgentLab, ensureBinary, until } from "../helpers/agents.ts";

const enc = (s: string) => new TextEncoder().encode(s);
const removeDb = (path: string) => {
  for (const f of [path, `${path}-wal`, `${path}-shm`]) rmSync(f, { force: true });
};

describe("the SQLite file replaced under a running store", () => {
  // (The reopen's log line is checked on the agents below: the store's logger is made at import time, before a
  // reporter added here could reach it.)
  test("get/list/writes follow the new file; a running watch re-lists", async () => {
    const dir = mkdtempSync(join(tmpdir(), "fb-sqlr-"));
    const path = join(dir, "f.db");
    const a = SqliteStore.open(path, { pollMs: 20 });
    const ac = new AbortController();
    try {
      await a.create("subnets/old", enc("old"));
      const events: WatchEvent[] = [];
      const watching = (async () => {
        for await (const ev of a.watch("subnets/", (await a.list("subnets/")).revision, ac.signal)) events.push(ev);
      })();
      removeDb(path);
      const b = SqliteStore.open(path); // what `config put` does on a missing file
      await b.create("config", enc("new config"));
      await b.create("subnets/new", enc("new"));
      await b.close();

      expect(new TextDecoder().decode((await a.get("config"))!.value)).toBe("new config");
      expect((await a.list("subnets/")).items.map((kv) => kv.key)).toEqual(["subnets/new"]);
      await until(() => events.some((e) => e.type === "relist"), 5000);
      expect(events.some((e) => e.type === "relist")).toBe(true);
      // Writes land in the new file, seen by a fresh reader.
      await a.create("subnets/after", enc("x"));
      const c = SqliteStore.open(path);
      expect((await c.list("subnets/")).items.map((kv) => kv.key)).toEqual(["subnets/after", "subnets/new"]);
      await c.close();
      ac.abort();
      await watching;
    } finally {
      ac.abort();
      await a.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("the SQLite file replaced under running agents", () => {
  let lab: AgentLab;
  beforeAll(() => {
    ensureBinary();
  });
  afterEach(() => lab?.cleanup());

  test("rm + config put: each agent reopens, re-creates its lease in the new file and stays ready", async () => {
    lab = new AgentLab();
    const config = '{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}';
    lab.putConfig(config);
    const hosts = [lab.addHost(), lab.addHost()];
    for (const h of hosts) lab.start(h, ["--subnet-lease-ttl", "6s"]);
    for (const h of hosts) expect(await until(() => lab.health(h, "/readyz") === 200, 20_000)).toBe(true);
    const subnets = hosts.map((h) => lab.subnetOf(h));

    removeDb(lab.db);
    lab.putConfig(config);
    const leases = () => JSON.parse(lab.cli(["leases", "--json", ...lab.storeFlags()]).out || "[]") as { publicIP: string }[];
    const back = await until(() => {
      const l = leases();
      return hosts.every((h) => l.some((x) => x.publicIP === h.ip)) ? l : undefined;
    }, 20_000);
    expect(back).toBeDefined();
    for (const h of hosts) {
      expect(lab.log(h)).toMatch(/the database file was (deleted|replaced); reopening it/);
      expect(lab.health(h, "/readyz")).toBe(200);
    }
    expect(hosts.map((h) => lab.subnetOf(h))).toEqual(subnets); // same subnets, re-created in the new file
  }, 90_000);
});
