// The lease protocol over a real SQLite store file (the protocol is store-agnostic; the conformance suite covers
// that every store honours the interface it relies on).
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { consola } from "../../src/log.ts";
import { formatCIDR, parseCIDR } from "../../src/ipmath.ts";
import { type LeaseAttrs, encodeLeaseAttrs, subnetKey } from "../../src/lease.ts";
import {
  LeaseKeeper,
  OutOfSubnetsError,
  acquireLease,
  listLeases,
  reclaimLease,
  renewDelayMs,
  renewLease,
} from "../../src/lease-protocol.ts";
import type { Store } from "../../src/store.ts";
import { SqliteStore } from "../../stores/sqlite.ts";
import { cfg } from "./net-config.ts";

const dir = mkdtempSync(join(tmpdir(), "fb-lease-"));
const opened: Store[] = [];
afterEach(async () => {
  await Promise.all(opened.splice(0).map((s) => s.close()));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
const freshPath = () => join(dir, `l${n++}.db`);
const open = (path: string) => {
  const s = SqliteStore.open(path);
  opened.push(s);
  return s;
};

const attrs = (ip: string): LeaseAttrs => ({ publicIP: ip, publicIPv6: null, backendType: "host-gw" });
const HOUR = 3_600_000;

describe("lease protocol", () => {
  test("concurrent hosts get distinct subnets inside [SubnetMin, SubnetMax]", async () => {
    const path = freshPath();
    const c = cfg("10.5.0.0/16", 24);
    const leases = await Promise.all(
      Array.from({ length: 30 }, (_, i) => acquireLease(open(path), c, attrs(`192.0.2.${i + 1}`), { previousSubnet: null, ttlMs: HOUR })),
    );
    const subnets = leases.map((l) => formatCIDR(l.subnet));
    expect(new Set(subnets).size).toBe(30);
    for (const l of leases) expect(l.subnet.ip >= c.subnetMin && l.subnet.ip <= c.subnetMax).toBe(true);
    expect((await listLeases(open(path))).leases.length).toBe(30);
  });

  test("a restarted host keeps its subnet (reuse by public IP), with new attrs", async () => {
    const s = open(freshPath());
    const c = cfg("10.5.0.0/16", 24);
    const a = await acquireLease(s, c, attrs("192.0.2.1"), { previousSubnet: null, ttlMs: HOUR });
    const b = await acquireLease(
      s,
      c,
      { ...attrs("192.0.2.1"), backendType: "vxlan", backendData: { VNI: 1, VtepMAC: "02:00:00:00:00:01" } },
      { previousSubnet: null, ttlMs: HOUR },
    );
    expect(formatCIDR(b.subnet)).toBe(formatCIDR(a.subnet));
    expect((await listLeases(s)).leases[0]!.attrs.backendType).toBe("vxlan");
  });

  test("the previous subnet from subnet.env is asked for again when free", async () => {
    const s = open(freshPath());
    const l = await acquireLease(s, cfg("10.5.0.0/16", 24), attrs("192.0.2.9"), { previousSubnet: parseCIDR("10.5.77.0/24"), ttlMs: HOUR });
    expect(formatCIDR(l.subnet)).toBe("10.5.77.0/24");
    // Held by someone else: not taken.
    const m = await acquireLease(s, cfg("10.5.0.0/16", 24), attrs("192.0.2.10"), {
      previousSubnet: parseCIDR("10.5.77.0/24"),
      ttlMs: HOUR,
    });
    expect(formatCIDR(m.subnet)).not.toBe("10.5.77.0/24");
  });

  test("room for 4 subnets: the 5th host gets out of subnets and the others keep theirs", async () => {
    const s = open(freshPath());
    const c = cfg("10.5.0.0/16", 24, "10.5.1.0", "10.5.4.0");
    const got = [];
    for (let i = 1; i <= 4; i++) got.push(await acquireLease(s, c, attrs(`192.0.2.${i}`), { previousSubnet: null, ttlMs: HOUR }));
    expect(new Set(got.map((l) => formatCIDR(l.subnet)))).toEqual(new Set(["10.5.1.0/24", "10.5.2.0/24", "10.5.3.0/24", "10.5.4.0/24"]));
    const err = await acquireLease(s, c, attrs("192.0.2.5"), { previousSubnet: null, ttlMs: HOUR }).catch((e) => e);
    expect(err).toBeInstanceOf(OutOfSubnetsError);
    expect(err.message).toMatch(/^out of subnets/);
    expect((await listLeases(s)).leases.length).toBe(4);
  });

  test("renewal is compare-and-set and extends the expiry", async () => {
    const s = open(freshPath());
    const l = await acquireLease(s, cfg("10.5.0.0/16", 24), attrs("192.0.2.1"), { previousSubnet: null, ttlMs: 2000 });
    const before = (await listLeases(s)).leases[0]!.expiresAt!;
    await Bun.sleep(50);
    const r = await renewLease(s, l, 60_000);
    expect(r.ok).toBe(true);
    const after = (await listLeases(s)).leases[0]!.expiresAt!;
    expect(after).toBeGreaterThan(before + 50_000);
    // Another host overwrote the record: renewing on our stale revision must not clobber it.
    const key = subnetKey(l.subnet);
    const cur = (await s.get(key))!;
    await s.update(key, encodeLeaseAttrs(attrs("192.0.2.99")), cur.revision, { ttlMs: HOUR });
    const r2 = await renewLease(s, r.ok ? r.lease : l, HOUR);
    expect(r2).toEqual({ ok: false, reason: "changed" });
    expect((await listLeases(s)).leases[0]!.attrs.publicIP).toBe("192.0.2.99");
  });

  test("a lease left to expire is freed and taken by the next host", async () => {
    const s = open(freshPath());
    const c = cfg("10.5.0.0/16", 24, "10.5.1.0", "10.5.1.0"); // room for exactly one
    await acquireLease(s, c, attrs("192.0.2.1"), { previousSubnet: null, ttlMs: 800 });
    await expect(acquireLease(s, c, attrs("192.0.2.2"), { previousSubnet: null, ttlMs: HOUR })).rejects.toBeInstanceOf(OutOfSubnetsError);
    await Bun.sleep(1000);
    const l = await acquireLease(s, c, attrs("192.0.2.2"), { previousSubnet: null, ttlMs: HOUR });
    expect(formatCIDR(l.subnet)).toBe("10.5.1.0/24");
  });

  test("a reserved subnet is never handed out; our own reservation is held and stays a reservation", async () => {
    const s = open(freshPath());
    const c = cfg("10.5.0.0/16", 24, "10.5.1.0", "10.5.2.0");
    await s.create("subnets/10.5.1.0-24", encodeLeaseAttrs(attrs("192.0.2.200"))); // no ttl = reservation
    await s.create("subnets/10.5.2.0-24", encodeLeaseAttrs(attrs("192.0.2.1")));
    const mine = await acquireLease(s, c, { ...attrs("192.0.2.1"), backendType: "vxlan" }, { previousSubnet: null, ttlMs: HOUR });
    expect(formatCIDR(mine.subnet)).toBe("10.5.2.0/24");
    expect(mine.expiresAt).toBeNull();
    expect((await s.get("subnets/10.5.2.0-24"))!.expiresAt).toBeNull();
    expect(renewDelayMs(mine, HOUR, HOUR)).toBe(Number.POSITIVE_INFINITY);
    await expect(acquireLease(s, c, attrs("192.0.2.3"), { previousSubnet: parseCIDR("10.5.1.0/24"), ttlMs: HOUR })).rejects.toBeInstanceOf(
      OutOfSubnetsError,
    );
  });

  test("a corrupt record is skipped and logged, and its subnet is not handed out", async () => {
    const s = open(freshPath());
    const c = cfg("10.5.0.0/16", 24, "10.5.1.0", "10.5.2.0");
    await s.create("subnets/10.5.1.0-24", new TextEncoder().encode('{"PublicIP":"1.2.3.4; reboot"}'), { ttlMs: HOUR });
    const logged: string[] = [];
    const reporter = { log: (o: { args: unknown[] }) => void logged.push(o.args.join(" ")) };
    consola.addReporter(reporter);
    try {
      const snap = await listLeases(s);
      expect(snap.leases.length).toBe(0);
      expect(snap.corrupt.map(formatCIDR)).toEqual(["10.5.1.0/24"]);
      const l = await acquireLease(s, c, attrs("192.0.2.1"), { previousSubnet: null, ttlMs: HOUR });
      expect(formatCIDR(l.subnet)).toBe("10.5.2.0/24");
    } finally {
      consola.removeReporter(reporter);
    }
    expect(logged.some((m) => m.includes("subnets/10.5.1.0-24") && m.includes("not an IPv4 address"))).toBe(true);
  });

  test("renewDelayMs: margin before expiry, at most half the TTL", () => {
    const l = { subnet: parseCIDR("10.5.1.0/24"), ipv6Subnet: null, attrs: attrs("1.1.1.1"), revision: 1, expiresAt: 1_000_000 };
    expect(renewDelayMs(l, 60 * 60_000, 24 * HOUR, 0)).toBe(Math.max(1_000_000 - HOUR, 0));
    expect(renewDelayMs(l, 60 * 60_000, 10_000, 990_000)).toBe(5_000);
  });
});

describe("renewal repairs", () => {
  test("a corrupt record under our key is replaced by ours at renewal", async () => {
    const s = open(freshPath());
    const l = await acquireLease(s, cfg("10.5.0.0/16", 24), attrs("192.0.2.1"), { previousSubnet: null, ttlMs: HOUR });
    const key = subnetKey(l.subnet);
    await s.update(key, new TextEncoder().encode("{oops"), l.revision, { ttlMs: HOUR });
    const r = await renewLease(s, l, HOUR);
    expect(r.ok).toBe(true);
    expect((await listLeases(s)).leases[0]!.attrs.publicIP).toBe("192.0.2.1");
  });
});

describe("reclaim", () => {
  test("a vanished lease is re-created; a late second reclaim adopts our own record; another host's is refused", async () => {
    const s = open(freshPath());
    const l = await acquireLease(s, cfg("10.5.0.0/16", 24), attrs("192.0.2.1"), { previousSubnet: null, ttlMs: HOUR });
    const key = subnetKey(l.subnet);
    expect(await s.delete(key, l.revision)).toBe(true);
    const again = await reclaimLease(s, l, HOUR);
    expect(again).not.toBeNull();
    // The watch's delete event for the old record arrives after we re-created it: reclaim must keep ours.
    const late = await reclaimLease(s, l, HOUR);
    expect(late?.revision).toBe(again!.revision);
    // Someone else's record under the key is not ours.
    await s.update(key, encodeLeaseAttrs(attrs("192.0.2.99")), again!.revision, { ttlMs: HOUR });
    expect(await reclaimLease(s, l, HOUR)).toBeNull();
  });
});

describe("LeaseKeeper", () => {
  const until = async (cond: () => boolean | Promise<boolean>, ms = 5000) => {
    const end = Date.now() + ms;
    while (!(await cond()) && Date.now() < end) await Bun.sleep(20);
    return cond();
  };

  test("a lease deleted by hand is re-created as soon as the watch reports it, long before renewal is due", async () => {
    const s = open(freshPath());
    const l = await acquireLease(s, cfg("10.5.0.0/16", 24), attrs("192.0.2.1"), { previousSubnet: null, ttlMs: HOUR });
    const k = new LeaseKeeper(s, l, { ttlMs: HOUR, marginMs: 60_000 });
    const ac = new AbortController();
    const done = k.run(ac.signal);
    await s.delete(subnetKey(l.subnet), l.revision);
    k.notice(null);
    expect(await until(async () => (await listLeases(s)).leases.some((x) => x.attrs.publicIP === "192.0.2.1"))).toBe(true);
    ac.abort();
    expect(await done).toBe("stopped");
  });

  // Issue 12: a conflict the keeper waits out (test/unit/lease-conflict.test.ts follows it to the re-claim).
  test("our record taken over by another host is a conflict: the keeper keeps running and names the writer", async () => {
    const s = open(freshPath());
    const l = await acquireLease(s, cfg("10.5.0.0/16", 24), attrs("192.0.2.1"), { previousSubnet: null, ttlMs: HOUR });
    const k = new LeaseKeeper(s, l, { ttlMs: HOUR, marginMs: 60_000 });
    const ac = new AbortController();
    const done = k.run(ac.signal);
    await s.update(subnetKey(l.subnet), encodeLeaseAttrs(attrs("192.0.2.99")), l.revision, { ttlMs: HOUR });
    k.notice({ ...l, attrs: attrs("192.0.2.99") });
    expect(await until(async () => k.conflict === "PublicIP 192.0.2.99")).toBe(true);
    expect(await Promise.race([done, Bun.sleep(300).then(() => "running")])).toBe("running");
    ac.abort();
    expect(await done).toBe("stopped");
  });

  test("a failing store call is reported and retried; renewal then succeeds", async () => {
    const s = open(freshPath());
    const l = await acquireLease(s, cfg("10.5.0.0/16", 24), attrs("192.0.2.1"), { previousSubnet: null, ttlMs: 1000 });
    let failures = 1;
    // The real store, with its first update failing as an outage would.
    const flaky = new Proxy(s, {
      get: (t, p) => (p === "update" && failures-- > 0 ? () => Promise.reject(new Error("store down")) : Reflect.get(t, p).bind(t)),
    });
    const errors: string[] = [];
    const k = new LeaseKeeper(flaky, l, { ttlMs: 1000, marginMs: 60_000, onError: (e) => void errors.push(e.message) });
    const ac = new AbortController();
    const done = k.run(ac.signal);
    expect(await until(() => k.renewals > 0)).toBe(true);
    expect(errors).toEqual(["store down"]);
    ac.abort();
    expect(await done).toBe("stopped");
  });

  test("a reservation is only checked, never renewed; deleted, it is re-created as a lease", async () => {
    const s = open(freshPath());
    await s.create("subnets/10.5.9.0-24", encodeLeaseAttrs(attrs("192.0.2.1")));
    const l = await acquireLease(s, cfg("10.5.0.0/16", 24), attrs("192.0.2.1"), { previousSubnet: null, ttlMs: HOUR });
    expect(l.expiresAt).toBeNull();
    const k = new LeaseKeeper(s, l, { ttlMs: HOUR, marginMs: 60_000 });
    const ac = new AbortController();
    const done = k.run(ac.signal);
    const rev = (await s.get("subnets/10.5.9.0-24"))!.revision;
    await s.delete("subnets/10.5.9.0-24", rev);
    k.notice(null);
    expect(await until(async () => (await s.get("subnets/10.5.9.0-24")) !== null)).toBe(true);
    expect(k.lease.expiresAt).not.toBeNull();
    expect(k.renewals).toBe(0);
    ac.abort();
    await done;
  });
});
