import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseNetworkConfig } from "../../src/config.ts";
import { encodeLeaseAttrs, subnetKey } from "../../src/lease.ts";
import { acquireLeaseFrom } from "../../src/lease-protocol.ts";
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

test("the lease acquisition's list is the first sync: no second list, and nothing written after it is missed", async () => {
  const s = SqliteStore.open(join(dir, "pw-initial.db"));
  const ac = new AbortController();
  let lists = 0;
  const counted = new Proxy(s, {
    get(target, prop) {
      if (prop === "list") lists++;
      const v = Reflect.get(target, prop, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  try {
    await s.create("subnets/10.5.2.0-24", val("192.0.2.2"), { ttlMs: 60_000 });
    const cfg = parseNetworkConfig('{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}');
    const attrs = { publicIP: "192.0.2.1", publicIPv6: null, backendType: "host-gw" };
    const { lease, snapshot } = await acquireLeaseFrom(counted, cfg, attrs, { previousSubnet: null, ttlMs: 60_000 });
    expect(lists).toBe(1);
    await s.create("subnets/10.5.9.0-24", val("192.0.2.9"), { ttlMs: 60_000 }); // after the list, before the watch
    const box = { snapshot };
    const it = watchPeers(counted, () => subnetKey(lease.subnet), ac.signal, undefined, { initial: box });
    const evs = await collect(it, (e) => e.some((x) => x.type === "added" && x.key === "subnets/10.5.9.0-24"));
    const keys = evs.flatMap((e) => (e.type === "added" ? [e.key] : e.type));
    expect(keys).toEqual(["subnets/10.5.2.0-24", "synced", "own", "subnets/10.5.9.0-24"]);
    expect(lists).toBe(1); // the watch started from the snapshot, not from a list of its own
    expect(box.snapshot).toBeUndefined(); // taken out, so the watch does not keep it alive
  } finally {
    ac.abort();
    await s.close();
  }
});

test("the store watch starts before the first sync is reported, and ends with the peer watch even when left at that point", async () => {
  const s = SqliteStore.open(join(dir, "pw-early.db"));
  const ac = new AbortController();
  const watchSignals: AbortSignal[] = [];
  const spied = new Proxy(s, {
    get(target, prop) {
      const v = Reflect.get(target, prop, target);
      if (prop === "watch")
        return (prefix: string, rev: number, signal: AbortSignal) => {
          watchSignals.push(signal);
          return (v as typeof s.watch).call(target, prefix, rev, signal);
        };
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  try {
    await s.create("subnets/10.5.2.0-24", val("192.0.2.2"), { ttlMs: 60_000 });
    const it = watchPeers(spied, () => "subnets/10.5.1.0-24", ac.signal);
    const first = await collect(it, (e) => e.some((x) => x.type === "synced"));
    expect(first.map((e) => e.type)).toEqual(["added", "synced"]);
    // The consumer has not asked for more yet (it is programming the first sync): the store watch is already up.
    expect(watchSignals.length).toBe(1);
    // A peer written meanwhile comes as the next event.
    await s.create("subnets/10.5.3.0-24", val("192.0.2.3"), { ttlMs: 60_000 });
    const next = await collect(it, (e) => e.length >= 1);
    expect(next.map((e) => (e.type === "added" ? e.key : e.type))).toEqual(["subnets/10.5.3.0-24"]);

    // Left right at its first sync (the consumer returns): the store watch it started is ended too.
    const it2 = watchPeers(spied, () => "subnets/10.5.1.0-24", ac.signal);
    await collect(it2, (e) => e.some((x) => x.type === "synced"));
    expect(watchSignals.length).toBe(2);
    expect(watchSignals[1]!.aborted).toBe(false);
    await it2.return(undefined);
    expect(watchSignals[1]!.aborted).toBe(true);
    expect(ac.signal.aborted).toBe(false);
  } finally {
    ac.abort();
    await s.close();
  }
});
