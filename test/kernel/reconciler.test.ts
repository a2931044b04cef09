// Reconciler against real iproute2 in a throw-away namespace.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { CommandQueue, bridgeJson, ipJson } from "../../src/kernel/queue.ts";
import { Reconciler } from "../../src/kernel/reconciler.ts";
import { NEXTHOP_ID_BASE, ROUTE_PROTO, type StateFragment } from "../../src/kernel/types.ts";
import { hostgwPeerState, vxlanDevice, vxlanLinkAdd, vxlanPeerState } from "../helpers/kernel-fixtures.ts";
import { makeNs, type TestNs } from "./netns.ts";

let ns: TestNs;
beforeAll(() => {
  ns = makeNs();
});
afterAll(() => ns?.remove());

const queues: CommandQueue[] = [];
const recs: Reconciler[] = [];
/** The mode the current describe block runs in: undefined = nexthop objects (detected), false = plain routes forced. */
let nexthops: boolean | undefined;
function make(owned: string[] = ["flannel.1"]) {
  const q = new CommandQueue({ netns: ns.name, retryBaseMs: 10, maxRetries: 2 });
  const r = new Reconciler(q, { ownedDevices: owned, netns: ns.name, coalesceMs: 1, nexthops });
  queues.push(q);
  recs.push(r);
  return r;
}
afterEach(() => {
  for (const r of recs.splice(0)) r.stop();
  for (const q of queues.splice(0)) q.close();
  // Leave the namespace as beforeAll made it.
  ns.flushOurs(ROUTE_PROTO);
  Bun.spawnSync(["ip", "-n", ns.name, "nexthop", "flush"]); // a test's foreign nexthops too
  // Deleting an underlay also removes the vxlan devices on it, so a later name may already be gone.
  for (const l of JSON.parse(ns.ip("-j", "link", "show")) as { ifname: string }[])
    if (l.ifname !== "lo" && l.ifname !== "ul0") Bun.spawnSync(["ip", "-n", ns.name, "link", "del", l.ifname]);
});

type KRoute = { dst: string; gateway?: string; dev?: string; flags?: string[]; nhid?: number };
type KNh = { id: number; gateway?: string; dev?: string; protocol?: string; flags?: string[] };
const nexthopList = async () => (await ipJson(["nexthop", "show"], ns.name)) as KNh[];
/** Every route of ours goes through one of our nexthops in nexthop mode, and none does in plain mode. */
async function expectMode() {
  const ours = (await ipJson(["route", "show", "proto", String(ROUTE_PROTO)], ns.name)) as KRoute[];
  const nhs = new Map((await nexthopList()).map((n) => [n.id, n]));
  for (const r of ours) {
    if (nexthops === false) expect(r.nhid).toBeUndefined();
    else {
      const nh = nhs.get(r.nhid!);
      expect(nh?.protocol).toBe(String(ROUTE_PROTO));
      expect(r.nhid!).toBeGreaterThanOrEqual(NEXTHOP_ID_BASE);
      expect(`${nh?.gateway} ${nh?.dev}`).toBe(`${r.gateway} ${r.dev}`);
    }
  }
  if (nexthops === false) expect(await nexthopList()).toEqual([]);
}
const routes = async (proto: number | string = ROUTE_PROTO) =>
  ((await ipJson(["route", "show", "proto", String(proto)], ns.name)) as KRoute[])
    .map((r) => `${r.dst} via ${r.gateway} dev ${r.dev}`)
    .sort();
const neighs = async (dev: string) =>
  ((await ipJson(["neigh", "show", "dev", dev], ns.name)) as { dst: string; lladdr: string; state: string[] }[])
    .map((n) => `${n.dst} ${n.lladdr} ${n.state.join(",")}`)
    .sort();
const fdbs = async (dev: string) =>
  ((await bridgeJson(["fdb", "show", "dev", dev], ns.name)) as { mac: string; dst?: string }[])
    .filter((f) => f.dst)
    .map((f) => `${f.mac} ${f.dst}`)
    .sort();
const link = async (dev: string) =>
  (
    (await ipJson(["-d", "addr", "show", "dev", dev], ns.name)) as {
      ifindex: number;
      address: string;
      mtu: number;
      flags: string[];
      linkinfo: { info_data: { id: number; learning: boolean } };
      addr_info: { local: string; prefixlen: number; scope: string }[];
    }[]
  )[0]!;

const hostgw = (i: number): StateFragment => hostgwPeerState(`10.5.${i}.0`, `192.168.77.${10 + i}`);

const vxdev = vxlanDevice;
const local = (dev = vxdev()): StateFragment => ({ devices: [dev], addresses: [{ dev: dev.name, cidr: "10.5.52.0/32" }] });
const mac = (i: number) => `02:bb:00:00:00:${i.toString(16).padStart(2, "0")}`;
const vxpeer = (i: number, dst = `192.168.77.${10 + i}`): StateFragment => vxlanPeerState(`10.5.${i}.0`, mac(i), dst);

for (const mode of [undefined, false] as const)
  describe(`Reconciler (${mode === false ? "plain gateway routes, forced" : "routes through nexthop objects"})`, () => {
    beforeAll(() => {
      nexthops = mode;
    });
    test("host-gw: set, change and delete routes", async () => {
      const r = make([]);
      for (let i = 1; i <= 3; i++) r.set(`peer:${i}`, hostgw(i));
      await r.flush();
      expect(await routes()).toEqual([
        "10.5.1.0/24 via 192.168.77.11 dev ul0",
        "10.5.2.0/24 via 192.168.77.12 dev ul0",
        "10.5.3.0/24 via 192.168.77.13 dev ul0",
      ]);
      r.set("peer:2", { routes: [{ dst: "10.5.2.0/24", via: "192.168.77.99", dev: "ul0", onlink: false }] });
      r.delete("peer:3");
      await r.flush();
      expect(await routes()).toEqual(["10.5.1.0/24 via 192.168.77.11 dev ul0", "10.5.2.0/24 via 192.168.77.99 dev ul0"]);
      await expectMode();
      // Re-setting the same fragment queues nothing.
      const before = queues[0]!.stats().sent;
      r.set("peer:1", hostgw(1));
      await r.flush();
      expect(queues[0]!.stats().sent).toBe(before);
      expect(() => r.set("peer:x", { routes: [{ dst: "10.5.9.0/24", via: "1.2.3.4; reboot", dev: "ul0", onlink: false }] })).toThrow(
        "route via",
      );
    });

    test("vxlan: device, address, neighbour, fdb, route; delete removes them", async () => {
      const r = make();
      r.set("local", local());
      r.set("peer:7", vxpeer(7));
      r.set("peer:8", vxpeer(8));
      await r.flush();
      const l = await link("flannel.1");
      expect(l.address).toBe("02:aa:00:00:00:01");
      expect(l.mtu).toBe(1450);
      expect(l.flags).toContain("UP");
      expect(l.linkinfo.info_data.id).toBe(1);
      expect(l.linkinfo.info_data.learning).toBe(false);
      expect(l.addr_info.filter((a) => a.scope === "global").map((a) => `${a.local}/${a.prefixlen}`)).toEqual(["10.5.52.0/32"]);
      expect(await neighs("flannel.1")).toEqual([`10.5.7.0 ${mac(7)} PERMANENT`, `10.5.8.0 ${mac(8)} PERMANENT`]);
      expect(await fdbs("flannel.1")).toEqual([`${mac(7)} 192.168.77.17`, `${mac(8)} 192.168.77.18`]);
      expect(await routes()).toEqual(["10.5.7.0/24 via 10.5.7.0 dev flannel.1", "10.5.8.0/24 via 10.5.8.0 dev flannel.1"]);
      await expectMode();

      // A peer's public IP changes: the FDB entry moves, nothing is left behind.
      r.set("peer:8", vxpeer(8, "192.168.77.88"));
      r.delete("peer:7");
      await r.flush();
      expect(await neighs("flannel.1")).toEqual([`10.5.8.0 ${mac(8)} PERMANENT`]);
      expect(await fdbs("flannel.1")).toEqual([`${mac(8)} 192.168.77.88`]);
      expect(await routes()).toEqual(["10.5.8.0/24 via 10.5.8.0 dev flannel.1"]);
      expect(queues[0]!.stats().failed).toBe(0);
      // Nothing of the deleted peer is left, its nexthop included.
      expect((await nexthopList()).map((n) => n.gateway)).toEqual(nexthops === false ? [] : ["10.5.8.0"]);
    });

    test("fullReconcile repairs a route deleted by hand", async () => {
      const r = make([]);
      r.set("peer:1", hostgw(1));
      r.set("peer:2", hostgw(2));
      await r.flush();
      ns.ip("route", "del", "10.5.2.0/24");
      expect(await r.fullReconcile()).toEqual({ added: 0, removed: 0, repaired: 1 });
      expect(await routes()).toEqual(["10.5.1.0/24 via 192.168.77.11 dev ul0", "10.5.2.0/24 via 192.168.77.12 dev ul0"]);
      expect(await r.fullReconcile()).toEqual({ added: 0, removed: 0, repaired: 0 });
      await expectMode();
    });

    test("fullReconcile removes stale owned entries and touches nothing it does not own", async () => {
      // Left over from a previous run: a vxlan device with an extra address, stale peer state, and foreign state.
      ns.ip(...vxlanLinkAdd(vxdev()));
      ns.ip("link", "set", "flannel.1", "up");
      ns.ip("addr", "add", "10.5.52.0/32", "dev", "flannel.1");
      ns.ip("addr", "add", "10.5.99.0/32", "dev", "flannel.1"); // old subnet
      ns.ip("neigh", "replace", "10.5.3.0", "lladdr", mac(3), "dev", "flannel.1", "nud", "permanent"); // stale peer
      ns.bridge("fdb", "append", mac(3), "dev", "flannel.1", "dst", "192.168.77.13", "self", "permanent");
      ns.ip("route", "replace", "10.5.3.0/24", "via", "10.5.3.0", "dev", "flannel.1", "onlink", "proto", String(ROUTE_PROTO));
      ns.ip("neigh", "replace", "10.5.4.0", "lladdr", mac(4), "dev", "flannel.1", "nud", "reachable"); // not PERMANENT
      ns.ip("route", "replace", "10.6.0.0/24", "via", "192.168.77.50", "dev", "ul0", "proto", "static"); // other proto
      // A device we do not own, with a permanent neighbour and an fdb entry with a dst.
      ns.ip("link", "add", "other.1", "type", "vxlan", "id", "77", "local", "192.168.77.1", "dev", "ul0", "dstport", "0");
      ns.ip("link", "set", "other.1", "up");
      ns.ip("neigh", "replace", "10.7.0.0", "lladdr", mac(9), "dev", "other.1", "nud", "permanent");
      ns.bridge("fdb", "append", mac(9), "dev", "other.1", "dst", "192.168.77.19", "self", "permanent");
      ns.ip("addr", "add", "10.7.0.1/32", "dev", "other.1");

      const r = make(["flannel.1"]);
      r.set("local", local());
      r.set("peer:8", vxpeer(8)); // present now, absent in the kernel
      const c = await r.fullReconcile();
      // removed: stale route, neighbour, fdb remote, old address; added: the three entries of peer 8.
      expect(c).toEqual({ added: 3, removed: 4, repaired: 0 });

      expect(await routes()).toEqual(["10.5.8.0/24 via 10.5.8.0 dev flannel.1"]);
      expect(await neighs("flannel.1")).toEqual([`10.5.4.0 ${mac(4)} REACHABLE`, `10.5.8.0 ${mac(8)} PERMANENT`]);
      expect(await fdbs("flannel.1")).toEqual([`${mac(8)} 192.168.77.18`]);
      const l = await link("flannel.1");
      expect(l.addr_info.filter((a) => a.scope === "global").map((a) => `${a.local}/${a.prefixlen}`)).toEqual(["10.5.52.0/32"]);
      // Untouched:
      expect(await routes("static")).toEqual(["10.6.0.0/24 via 192.168.77.50 dev ul0"]);
      expect(await neighs("other.1")).toEqual([`10.7.0.0 ${mac(9)} PERMANENT`]);
      expect(await fdbs("other.1")).toEqual([`${mac(9)} 192.168.77.19`]);
      expect((await link("other.1")).addr_info.some((a) => a.local === "10.7.0.1")).toBe(true);
      expect(await r.fullReconcile()).toEqual({ added: 0, removed: 0, repaired: 0 });
      await expectMode();
    });

    test("a compatible device is reused (same ifindex and MAC, MTU fixed in place); an incompatible one is replaced", async () => {
      ns.ip(...vxlanLinkAdd(vxdev({ mtu: 1400, learning: true }))); // compatible, but MTU and learning differ
      const before = await link("flannel.1");
      const r = make();
      r.set("local", local());
      r.set("peer:8", vxpeer(8));
      await r.flush();
      let l = await link("flannel.1");
      expect(l.ifindex).toBe(before.ifindex);
      expect(l.address).toBe("02:aa:00:00:00:01");
      expect(l.mtu).toBe(1450);
      expect(l.linkinfo.info_data.learning).toBe(false);
      expect(l.flags).toContain("UP");

      // Same name, different VNI: delete and recreate; the peer state that went with the old device comes back.
      r.set("local", local(vxdev({ vni: 2 })));
      await r.flush();
      l = await link("flannel.1");
      expect(l.ifindex).not.toBe(before.ifindex);
      expect(l.linkinfo.info_data.id).toBe(2);
      expect(l.address).toBe("02:aa:00:00:00:01");
      expect(l.addr_info.filter((a) => a.scope === "global").map((a) => a.local)).toEqual(["10.5.52.0"]);
      expect(await neighs("flannel.1")).toEqual([`10.5.8.0 ${mac(8)} PERMANENT`]);
      expect(await fdbs("flannel.1")).toEqual([`${mac(8)} 192.168.77.18`]);
      expect(await routes()).toEqual(["10.5.8.0/24 via 10.5.8.0 dev flannel.1"]);
      await expectMode();

      // Deleting the local fragment removes the device.
      r.delete("peer:8");
      r.delete("local");
      await r.flush();
      const names = ((await ipJson(["link", "show"], ns.name)) as { ifname: string }[]).map((x) => x.ifname);
      expect(names).not.toContain("flannel.1");
    });

    test("periodic full reconcile brings back a deleted neighbour", async () => {
      const q = new CommandQueue({ netns: ns.name, retryBaseMs: 10 });
      const r = new Reconciler(q, { ownedDevices: () => ["flannel.1"], netns: ns.name, fullIntervalMs: 50, coalesceMs: 1 });
      queues.push(q);
      recs.push(r);
      r.set("local", local());
      r.set("peer:8", vxpeer(8));
      await r.flush();
      ns.ip("neigh", "del", "10.5.8.0", "dev", "flannel.1");
      r.start();
      let ok = false;
      for (let i = 0; i < 40 && !ok; i++) {
        await Bun.sleep(25);
        ok = (await neighs("flannel.1")).includes(`10.5.8.0 ${mac(8)} PERMANENT`);
      }
      r.stop();
      expect(ok).toBe(true);
    });
    test("a device that cannot be created yet holds its peers back and is retried until it can (no full reconcile running)", async () => {
      const r = make();
      r.set("local", local(vxdev({ underlay: "ulx" }))); // underlay missing: `ip link add ... dev ulx` fails
      r.set("peer:7", vxpeer(7));
      await r.flush();
      expect(await routes()).toEqual([]);
      ns.ip("link", "add", "ulx", "type", "bridge");
      ns.ip("link", "set", "ulx", "up");
      let ok = false;
      for (let i = 0; i < 60 && !ok; i++) {
        await Bun.sleep(100);
        ok = (await routes()).includes("10.5.7.0/24 via 10.5.7.0 dev flannel.1");
      }
      expect(ok).toBe(true);
      expect(await fdbs("flannel.1")).toContain(`${mac(7)} 192.168.77.17`);
    });

    test("fdb entries the kernel learned (vxlan Learning) are not ours: a full reconcile leaves them", async () => {
      const r = make();
      r.set("local", local(vxdev({ learning: true })));
      r.set("peer:7", vxpeer(7));
      await r.flush();
      ns.bridge("fdb", "add", "02:cc:00:00:00:01", "dev", "flannel.1", "dst", "192.168.77.99", "self", "dynamic");
      await r.fullReconcile();
      expect(await fdbs("flannel.1")).toContain("02:cc:00:00:00:01 192.168.77.99");
      expect(await fdbs("flannel.1")).toContain(`${mac(7)} 192.168.77.17`);
    });
  });

describe("Reconciler: nexthop ids and migration", () => {
  beforeAll(() => {
    nexthops = undefined;
  });
  const B = NEXTHOP_ID_BASE;

  test("others' nexthop ids are skipped and left alone; ours from a previous run are adopted; stale ours go in the full reconcile", async () => {
    ns.ip("nexthop", "add", "id", String(B), "via", "192.168.77.40", "dev", "ul0"); // someone else's (no proto 159)
    ns.ip("nexthop", "add", "id", String(B + 5), "via", "192.168.77.11", "dev", "ul0", "proto", String(ROUTE_PROTO));
    ns.ip("route", "add", "10.5.1.0/24", "nhid", String(B + 5), "proto", String(ROUTE_PROTO)); // a previous run's
    ns.ip("nexthop", "add", "id", String(B + 6), "via", "192.168.77.66", "dev", "ul0", "proto", String(ROUTE_PROTO)); // stale
    const r = make([]);
    r.set("peer:1", hostgw(1));
    r.set("peer:2", hostgw(2));
    await r.flush();
    expect(r.usesNexthops).toBe(true);
    const rs = (await ipJson(["route", "show", "proto", String(ROUTE_PROTO)], ns.name)) as KRoute[];
    expect(rs.find((x) => x.dst === "10.5.1.0/24")?.nhid).toBe(B + 5);
    const id2 = rs.find((x) => x.dst === "10.5.2.0/24")?.nhid;
    expect([B, B + 5, B + 6]).not.toContain(id2!);
    expect((await nexthopList()).map((n) => n.id)).toContain(B + 6); // nothing deleted before the full reconcile
    expect(await r.fullReconcile()).toEqual({ added: 0, removed: 1, repaired: 0 });
    expect((await nexthopList()).map((n) => n.id).sort()).toEqual([B, B + 5, id2!].sort());
    expect((await nexthopList()).find((n) => n.id === B)?.gateway).toBe("192.168.77.40");
    await expectMode();
  });

  test("a plain gateway route (flanneld's, no proto 159) is replaced in place by one through our nexthop", async () => {
    ns.ip("route", "add", "10.5.1.0/24", "via", "192.168.77.11", "dev", "ul0"); // as flanneld leaves it (proto boot)
    ns.ip("route", "add", "10.5.2.0/24", "via", "192.168.77.12", "dev", "ul0", "proto", String(ROUTE_PROTO)); // older flannel-bin
    const r = make([]);
    r.set("peer:1", hostgw(1));
    r.set("peer:2", hostgw(2));
    expect(await r.fullReconcile()).toEqual({ added: 1, removed: 0, repaired: 1 });
    const all = (await ipJson(["route", "show", "table", "main"], ns.name)) as KRoute[];
    expect(all.filter((x) => x.dst.startsWith("10.5.")).map((x) => `${x.dst} ${x.gateway} ${x.nhid !== undefined}`)).toEqual([
      "10.5.1.0/24 192.168.77.11 true",
      "10.5.2.0/24 192.168.77.12 true",
    ]);
    await expectMode();
  });

  test("forced plain mode replaces routes through our nexthops with plain ones (and leaves the nexthops to the other mode)", async () => {
    const a = make([]);
    a.set("peer:1", hostgw(1));
    await a.flush();
    nexthops = false;
    const b = make([]);
    b.set("peer:1", hostgw(1));
    expect(await b.fullReconcile()).toEqual({ added: 0, removed: 0, repaired: 1 });
    const rs = (await ipJson(["route", "show", "proto", String(ROUTE_PROTO)], ns.name)) as KRoute[];
    expect(rs.map((x) => `${x.dst} ${x.gateway} ${x.nhid}`)).toEqual(["10.5.1.0/24 192.168.77.11 undefined"]);
    nexthops = undefined;
  });
});

describe("Reconciler: coalescing a trickle of changes", () => {
  test("peers arriving 10 ms apart share drains (busy window); a lone change after a quiet spell is one drain", async () => {
    const q = new CommandQueue({ netns: ns.name });
    const r = new Reconciler(q, { ownedDevices: [], netns: ns.name, coalesceMs: 5, busyCoalesceMs: 50, nexthops: false });
    queues.push(q);
    recs.push(r);
    // 20 host-gw peers over ~200 ms: without the window each one would be its own drain and its own `ip` process.
    for (let i = 1; i <= 20; i++) {
      r.set(`peer:${i}`, hostgw(i));
      await Bun.sleep(10);
    }
    await r.flush();
    expect((await routes()).length).toBe(20);
    const trickle = q.stats().batches;
    expect(trickle).toBeLessThanOrEqual(10); // ~5 on an idle machine; a loaded one merges more, never fewer
    // After a quiet spell a single change is one drain of its own (the short window, not the busy one).
    await Bun.sleep(200);
    const before = q.stats().batches;
    r.set("peer:21", hostgw(21));
    for (let i = 0; i < 100 && q.stats().batches === before; i++) await Bun.sleep(5);
    await r.flush();
    expect(q.stats().batches).toBe(before + 1);
    expect(await routes()).toContain("10.5.21.0/24 via 192.168.77.31 dev ul0");
  });
});
