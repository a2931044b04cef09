import { afterAll, describe, expect, test } from "bun:test";
import { consola } from "../../src/log.ts";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseNetworkConfig } from "../../src/config.ts";
import { formatCIDR } from "../../src/ipmath.ts";
import { type Lease, encodeLeaseAttrs, leaseFromKV } from "../../src/lease.ts";
import { acquireLease } from "../../src/lease-protocol.ts";
import { UsablePeers, keyShapeProblem, leaseProblem, usablePeerEvents } from "../../src/lease-validity.ts";
import { type PeerEvent, watchPeers } from "../../src/peer-watch.ts";
import { collect } from "../helpers/events.ts";
import { SqliteStore } from "../../stores/sqlite.ts";

const dir = mkdtempSync(join(tmpdir(), "fb-lv-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const CFG = parseNetworkConfig('{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}');
const CFG6 = parseNetworkConfig('{"Network":"10.0.0.0/8","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}');
const enc = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));
const vx = (ip: string, mac: string, extra: Record<string, unknown> = {}) => ({
  PublicIP: ip,
  PublicIPv6: null,
  BackendType: "vxlan",
  BackendData: { VNI: 1, VtepMAC: mac },
  ...extra,
});
let rev = 0;
const lease = (key: string, value: unknown, createRevision = ++rev): Lease => ({
  ...leaseFromKV({ key, value: enc(value), revision: createRevision + 1000, expiresAt: null }),
  createRevision,
});

describe("a record is used only if it can only describe itself", () => {
  // [name, key, value, why (substring) or null = usable]
  const cases: [string, string, unknown, string | null][] = [
    ["a valid vxlan lease", "subnets/10.0.5.0-24", vx("192.0.2.5", "02:00:00:00:00:05"), null],
    ["a valid host-gw lease", "subnets/10.0.6.0-24", { PublicIP: "192.0.2.6", BackendType: "host-gw" }, null],
    ["the whole Network", "subnets/10.0.0.0-8", vx("192.0.2.9", "02:00:00:00:00:09"), "prefix /8 is not the network's SubnetLen /24"],
    ["prefix 9", "subnets/10.0.0.0-9", vx("192.0.2.9", "02:00:00:00:00:09"), "prefix /9"],
    ["prefix 25 inside a /24", "subnets/10.0.5.0-25", vx("192.0.2.9", "02:00:00:00:00:09"), "prefix /25"],
    ["prefix 31", "subnets/10.0.5.0-31", vx("192.0.2.9", "02:00:00:00:00:09"), "prefix /31"],
    ["outside Network", "subnets/11.0.5.0-24", vx("192.0.2.9", "02:00:00:00:00:09"), "outside the Network 10.0.0.0/8"],
    ["PublicIP link-local 169.254.1.1", "subnets/10.0.7.0-24", vx("169.254.1.1", "02:00:00:00:00:07"), "link-local"],
    ["PublicIP 0.1.2.13", "subnets/10.0.7.0-24", vx("0.1.2.13", "02:00:00:00:00:07"), "0.0.0.0/8"],
    ["PublicIP 0.0.0.0 (missing)", "subnets/10.0.7.0-24", { BackendType: "host-gw" }, "0.0.0.0/8"],
    ["PublicIP loopback", "subnets/10.0.7.0-24", vx("127.0.0.1", "02:00:00:00:00:07"), "loopback"],
    ["PublicIP multicast", "subnets/10.0.7.0-24", vx("224.0.0.5", "02:00:00:00:00:07"), "multicast"],
    ["PublicIP 240/4", "subnets/10.0.7.0-24", vx("240.1.1.1", "02:00:00:00:00:07"), "240.0.0.0/4"],
    ["PublicIP broadcast", "subnets/10.0.7.0-24", vx("255.255.255.255", "02:00:00:00:00:07"), "broadcast"],
    ["PublicIPv6 link-local", "subnets/10.0.7.0-24", vx("192.0.2.7", "02:00:00:00:00:07", { PublicIPv6: "fe80::1" }), "PublicIPv6"],
    ["PublicIPv6 multicast", "subnets/10.0.7.0-24", vx("192.0.2.7", "02:00:00:00:00:07", { PublicIPv6: "ff02::1" }), "PublicIPv6"],
    ["PublicIPv6 ::1", "subnets/10.0.7.0-24", vx("192.0.2.7", "02:00:00:00:00:07", { PublicIPv6: "::1" }), "PublicIPv6"],
    ["VtepMAC all zero", "subnets/10.0.7.0-24", vx("192.0.2.7", "00:00:00:00:00:00"), "all zeros"],
    ["VtepMAC multicast", "subnets/10.0.7.0-24", vx("192.0.2.7", "01:00:5e:00:00:01"), "multicast"],
    ["VtepMAC broadcast", "subnets/10.0.7.0-24", vx("192.0.2.7", "ff:ff:ff:ff:ff:ff"), "multicast"],
    ["VtepMAC not a MAC", "subnets/10.0.7.0-24", vx("192.0.2.7", "02:00:00:00:00:07\nFAKE"), "not a MAC address"],
    ["VtepMAC a number", "subnets/10.0.7.0-24", vx("192.0.2.7", 5 as unknown as string), "not a string"],
  ];
  for (const [name, key, value, why] of cases) {
    test(name, () => {
      const p = leaseProblem(CFG, lease(key, value));
      if (why === null) expect(p).toBeNull();
      else expect(p).toContain(why);
    });
  }

  test("IPv6 twin: prefix must be IPv6SubnetLen and inside IPv6Network", () => {
    expect(leaseProblem(CFG6, lease("subnets/10.0.5.0-24&fc00:0:0:5::-64", vx("192.0.2.5", "02:00:00:00:00:05")))).toBeNull();
    expect(leaseProblem(CFG6, lease("subnets/10.0.5.0-24&fc00::-48", vx("192.0.2.5", "02:00:00:00:00:05")))).toContain(
      "IPv6 part: prefix /48",
    );
    expect(leaseProblem(CFG6, lease("subnets/10.0.5.0-24&fd00:0:0:5::-64", vx("192.0.2.5", "02:00:00:00:00:05")))).toContain(
      "outside the Network fc00::/48",
    );
  });
});

describe("conflicts: the record created first wins", () => {
  const own = lease("subnets/10.0.1.0-24", vx("192.0.2.1", "02:00:00:00:00:01"), 1);
  const fresh = () => new UsablePeers(CFG, () => own);

  test("a duplicate VtepMAC written later is ignored; the victim stays usable, whatever order they arrive in", () => {
    const victim = lease("subnets/10.0.2.0-24", vx("192.0.2.2", "02:00:00:00:00:02"), 10);
    const thief = lease("subnets/10.0.3.0-24", vx("192.0.2.3", "02:00:00:00:00:02"), 20);
    for (const order of [
      [victim, thief],
      [thief, victim],
    ]) {
      const u = fresh();
      for (const l of order) u.set(`subnets/${formatCIDR(l.subnet).replace("/", "-")}`, l);
      expect(u.isUsable("subnets/10.0.2.0-24")).toBe(true);
      expect(u.isUsable("subnets/10.0.3.0-24")).toBe(false);
    }
  });

  test("the newer one becomes usable when the older goes", () => {
    const u = fresh();
    u.set("subnets/10.0.2.0-24", lease("subnets/10.0.2.0-24", vx("192.0.2.2", "02:00:00:00:00:02"), 10));
    u.set("subnets/10.0.3.0-24", lease("subnets/10.0.3.0-24", vx("192.0.2.3", "02:00:00:00:00:02"), 20));
    const changed = u.delete("subnets/10.0.2.0-24");
    expect([...changed].sort()).toEqual(["subnets/10.0.2.0-24", "subnets/10.0.3.0-24"]);
    expect(u.isUsable("subnets/10.0.3.0-24")).toBe(true);
  });

  test("a renewal (new revision, same creation revision) does not flip the winner", () => {
    const u = fresh();
    u.set("subnets/10.0.2.0-24", lease("subnets/10.0.2.0-24", vx("192.0.2.2", "02:00:00:00:00:02"), 10));
    u.set("subnets/10.0.3.0-24", lease("subnets/10.0.3.0-24", vx("192.0.2.3", "02:00:00:00:00:02"), 20));
    const renewed = { ...lease("subnets/10.0.2.0-24", vx("192.0.2.2", "02:00:00:00:00:02"), 10), revision: 99_999 };
    u.set("subnets/10.0.2.0-24", renewed);
    expect(u.isUsable("subnets/10.0.2.0-24")).toBe(true);
    expect(u.isUsable("subnets/10.0.3.0-24")).toBe(false);
  });

  test("our own subnet and our own MAC are never a peer's", () => {
    const u = fresh();
    u.set("subnets/10.0.1.0-24&fc00::-64", lease("subnets/10.0.1.0-24&fc00::-64", vx("192.0.2.9", "02:00:00:00:00:09"), 0));
    u.set("subnets/10.0.4.0-24", lease("subnets/10.0.4.0-24", vx("192.0.2.4", "02:00:00:00:00:01"), 0));
    expect(u.isUsable("subnets/10.0.1.0-24&fc00::-64")).toBe(false);
    expect(u.isUsable("subnets/10.0.4.0-24")).toBe(false);
  });

  test("as events: each change passes on what the peer becomes, a removal the lease that was passed on", async () => {
    const a = lease("subnets/10.0.2.0-24", vx("192.0.2.2", "02:00:00:00:00:02"), 10);
    const b = lease("subnets/10.0.3.0-24", vx("192.0.2.3", "02:00:00:00:00:02"), 20);
    const b2 = lease("subnets/10.0.3.0-24", vx("192.0.2.33", "02:00:00:00:00:02"), 20);
    const c = lease("subnets/10.0.4.0-24", vx("192.0.2.4", "02:00:00:00:00:02"), 5); // older than all: it wins
    const add = (l: Lease): PeerEvent => ({ type: "added", key: `subnets/${formatCIDR(l.subnet).replace("/", "-")}`, lease: l });
    const del = (l: Lease): PeerEvent => ({ type: "removed", key: `subnets/${formatCIDR(l.subnet).replace("/", "-")}`, lease: l });
    async function* raw(): AsyncGenerator<PeerEvent> {
      yield* [add(b), add(a), { type: "synced", peers: 2 }, del(a), add(b2), add(c), del(c), add(b2)];
    }
    const out: string[] = [];
    for await (const ev of usablePeerEvents(raw(), new UsablePeers(CFG, () => own)))
      out.push(ev.type === "synced" ? `synced ${ev.peers}` : ev.type === "own" ? "own" : `${ev.type} ${ev.key} ${ev.lease.attrs.publicIP}`);
    expect(out).toEqual([
      "added subnets/10.0.2.0-24 192.0.2.2", // the initial sync as a whole: b never shows
      "synced 1",
      "removed subnets/10.0.2.0-24 192.0.2.2",
      "added subnets/10.0.3.0-24 192.0.2.3", // its rival left
      "added subnets/10.0.3.0-24 192.0.2.33", // changed
      "added subnets/10.0.4.0-24 192.0.2.4", // an older record takes the MAC: the lease passed on goes
      "removed subnets/10.0.3.0-24 192.0.2.33",
      "removed subnets/10.0.4.0-24 192.0.2.4",
      "added subnets/10.0.3.0-24 192.0.2.33", // usable again; the same lease once more changes nothing
    ]);
  });

  test("the reason is logged once per record", () => {
    const logged: string[] = [];
    const reporter = { log: (o: { args: unknown[] }) => void logged.push(o.args.join(" ")) };
    consola.addReporter(reporter);
    try {
      const u = fresh();
      const bad = lease("subnets/10.0.0.0-8", vx("192.0.2.9", "02:00:00:00:00:09"));
      for (let i = 0; i < 5; i++) u.set("subnets/10.0.0.0-8", { ...bad, revision: bad.revision + i });
      u.set("subnets/10.0.2.0-24", lease("subnets/10.0.2.0-24", vx("192.0.2.2", "02:00:00:00:00:02")));
    } finally {
      consola.removeReporter(reporter);
    }
    expect(logged.filter((m) => m.includes("subnets/10.0.0.0-8"))).toHaveLength(1);
  });
});

describe("through the peer watch and the lease protocol (SQLite)", () => {
  test("the issue's records: only the valid peers are added; a new host still gets a subnet", async () => {
    const s = SqliteStore.open(join(dir, "issue.db"));
    const ac = new AbortController();
    try {
      const put = (k: string, v: unknown) => s.create(k, enc(v), { ttlMs: 60_000 });
      await put("subnets/10.0.2.0-24", vx("192.0.2.2", "02:00:00:00:00:02")); // victim, first
      await put("subnets/10.0.0.0-8", vx("192.0.2.66", "02:00:00:00:00:66"));
      await put("subnets/10.0.3.0-24", vx("192.0.2.3", "02:00:00:00:00:02")); // reuses the victim's MAC
      await put("subnets/10.0.2.0-25", vx("192.0.2.67", "02:00:00:00:00:67"));
      await put("subnets/10.0.4.0-24", vx("169.254.1.1", "02:00:00:00:00:04"));
      await put("subnets/10.0.5.0-24", vx("0.1.2.13", "02:00:00:00:00:05"));
      await put("subnets/10.0.6.0-24", vx("192.0.2.6", "02:00:00:00:00:06"));
      const it = watchPeers(s, () => "subnets/10.0.1.0-24", ac.signal, { config: CFG, own: () => null });
      const evs = await collect(it, (e) => e.some((x) => x.type === "synced"));
      const added = evs.flatMap((e) => (e.type === "added" ? [e.key] : [])).sort();
      expect(added).toEqual(["subnets/10.0.2.0-24", "subnets/10.0.6.0-24"]);
      expect(evs.at(-1)).toEqual({ type: "synced", peers: 2 });

      // The victim's record goes: the MAC reuser is now the only holder and becomes a peer.
      const v = (await s.get("subnets/10.0.2.0-24"))!;
      await s.delete("subnets/10.0.2.0-24", v.revision);
      const next = await collect(it, (e) => e.length >= 2);
      expect(next.map((e) => (e.type === "added" || e.type === "removed" ? `${e.type} ${e.key}` : e.type)).sort()).toEqual([
        "added subnets/10.0.3.0-24",
        "removed subnets/10.0.2.0-24",
      ]);

      // The whole-Network key and the /25 do not take subnets: a joining host is not "out of subnets".
      const small = parseNetworkConfig('{"Network":"10.0.0.0/8","SubnetMin":"10.0.2.0","SubnetMax":"10.0.2.0"}');
      const l = await acquireLease(
        s,
        small,
        { publicIP: "192.0.2.10", publicIPv6: null, backendType: "vxlan", backendData: { VNI: 1, VtepMAC: "02:00:00:00:00:10" } },
        { previousSubnet: null, ttlMs: 60_000 },
      );
      expect(formatCIDR(l.subnet)).toBe("10.0.2.0/24");
      expect(keyShapeProblem(CFG, l.subnet, null)).toBeNull();
    } finally {
      ac.abort();
      await s.close();
    }
  });

  test("a reservation shaped like the whole Network is not taken up by the host it names", async () => {
    const s = SqliteStore.open(join(dir, "resv.db"));
    try {
      await s.create("subnets/10.0.0.0-8", encodeLeaseAttrs({ publicIP: "192.0.2.10", publicIPv6: null, backendType: "host-gw" }));
      const l = await acquireLease(
        s,
        CFG,
        { publicIP: "192.0.2.10", publicIPv6: null, backendType: "host-gw" },
        { previousSubnet: null, ttlMs: 60_000 },
      );
      expect(l.subnet.prefix).toBe(24);
    } finally {
      await s.close();
    }
  });
});
