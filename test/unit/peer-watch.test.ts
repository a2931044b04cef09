import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeLeaseAttrs } from "../../src/lease.ts";
import { watchPeers } from "../../src/peer-watch.ts";
import { collect } from "../helpers/events.ts";
import { SqliteStore } from "../../stores/sqlite.ts";

const dir = mkdtempSync(join(tmpdir(), "fb-pw-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const val = (ip: string) => encodeLeaseAttrs({ publicIP: ip, publicIPv6: null, backendType: "host-gw" });

test("snapshot then events, never our own lease, corrupt records skipped without removing the peer", async () => {
  const s = SqliteStore.open(join(dir, "pw.db"));
  const ac = new AbortController();
  try {
    await s.create("subnets/10.5.1.0-24", val("192.0.2.1"), { ttlMs: 60_000 }); // ours
    await s.create("subnets/10.5.2.0-24", val("192.0.2.2"), { ttlMs: 60_000 });
    await s.create("subnets/10.5.3.0-24", new TextEncoder().encode("garbage"), { ttlMs: 60_000 });
    const it = watchPeers(s, () => "subnets/10.5.1.0-24", ac.signal);
    const first = await collect(it, (e) => e.some((x) => x.type === "synced"));
    expect(first.map((e) => e.type)).toEqual(["added", "synced"]);
    expect(first[0]!.type === "added" && first[0]!.key).toBe("subnets/10.5.2.0-24");

    await s.create("subnets/10.5.4.0-24", val("192.0.2.4"), { ttlMs: 60_000 });
    const cur = (await s.get("subnets/10.5.2.0-24"))!;
    await s.update("subnets/10.5.2.0-24", new TextEncoder().encode("{broken"), cur.revision, { ttlMs: 60_000 });
    const k4 = (await s.get("subnets/10.5.4.0-24"))!;
    await s.delete("subnets/10.5.4.0-24", k4.revision);
    const own = (await s.get("subnets/10.5.1.0-24"))!;
    await s.update("subnets/10.5.1.0-24", val("192.0.2.1"), own.revision, { ttlMs: 60_000 });
    const evs = await collect(it, (e) => e.filter((x) => x.type !== "own").length >= 2 && e.some((x) => x.type === "own"));
    const summary = evs.map((e) => (e.type === "added" || e.type === "removed" ? `${e.type} ${e.key}` : e.type));
    expect(summary).toEqual(["added subnets/10.5.4.0-24", "removed subnets/10.5.4.0-24", "own"]);

    // An expiring peer is removed.
    await s.create("subnets/10.5.5.0-24", val("192.0.2.5"), { ttlMs: 300 });
    const exp = await collect(it, (e) => e.some((x) => x.type === "removed"));
    expect(exp.map((e) => e.type)).toEqual(["added", "removed"]);
  } finally {
    ac.abort();
    await s.close();
  }
});
