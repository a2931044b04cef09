// The reconciler's pure diff: desired state against a kernel view, without root or iproute2.
import { describe, expect, test } from "bun:test";
import type { KLink } from "../../../src/kernel/device-compat.ts";
import { DesiredState, type KernelSnapshot } from "../../../src/kernel/diff.ts";
import { parseFdbs, parseNeighs, parseRoute } from "../../../src/kernel/kernel-read.ts";
import { ROUTE_PROTO, type StateFragment } from "../../../src/kernel/types.ts";
import { vxlanDevice } from "../../helpers/kernel-fixtures.ts";

const P = ROUTE_PROTO;
const dev = vxlanDevice({ underlay: "eth0", mac: "02:00:00:00:00:01" });
const local: StateFragment = { devices: [dev], addresses: [{ dev: "flannel.1", cidr: "10.5.1.0/32" }] };
const peer = (i: number): StateFragment => ({
  neighs: [{ dev: "flannel.1", ip: `10.5.${i}.0`, lladdr: `02:00:00:00:00:${(16 + i).toString(16)}` }],
  fdbs: [{ dev: "flannel.1", mac: `02:00:00:00:00:${(16 + i).toString(16)}`, dst: `192.168.77.${i}` }],
  routes: [{ dst: `10.5.${i}.0/24`, via: `10.5.${i}.0`, dev: "flannel.1", onlink: true }],
});
const lines = (s: DesiredState) => {
  const p = s.planPeers();
  s.peersDone(p, () => true);
  return p.cmds.map((c) => `${c.tool} ${c.line}`);
};
const vxlanLink = (over: Partial<KLink> = {}, data: Record<string, unknown> = {}): KLink => ({
  ifname: "flannel.1",
  flags: ["BROADCAST", "UP"],
  mtu: 1450,
  address: "02:00:00:00:00:01",
  linkinfo: { info_kind: "vxlan", info_data: { id: 1, local: "192.168.77.1", link: "eth0", port: 8472, ...data } },
  addr_info: [{ family: "inet", local: "10.5.1.0", prefixlen: 32, scope: "global" }],
  ...over,
});
const empty = (): KernelSnapshot => ({ present: new Set(["flannel.1"]), routes: [], neighs: new Map(), fdbs: new Map() });

describe("DesiredState", () => {
  test("a new peer: FDB, neighbour, then route; setting it again changes nothing", () => {
    const s = new DesiredState(P);
    s.set("peer:a", peer(2));
    expect(lines(s)).toEqual([
      "bridge fdb replace 02:00:00:00:00:12 dev flannel.1 dst 192.168.77.2 self permanent",
      "ip neigh replace 10.5.2.0 lladdr 02:00:00:00:00:12 dev flannel.1 nud permanent",
      `ip route replace 10.5.2.0/24 via 10.5.2.0 dev flannel.1 onlink proto ${P}`,
    ]);
    s.set("peer:a", peer(2));
    expect(lines(s)).toEqual([]);
  });

  test("two ids desiring one key: the latest wins, and the other takes over when it leaves", () => {
    const s = new DesiredState(P);
    const r = (via: string): StateFragment => ({ routes: [{ dst: "10.5.9.0/24", via, dev: "eth0", onlink: false }] });
    s.set("peer:a", r("192.168.77.1"));
    s.set("peer:b", r("192.168.77.2"));
    expect(lines(s)).toEqual([`ip route replace 10.5.9.0/24 via 192.168.77.2 dev eth0 proto ${P}`]);
    s.set("peer:a", r("192.168.77.3")); // a set() again is the most recent
    expect(lines(s)).toEqual([`ip route replace 10.5.9.0/24 via 192.168.77.3 dev eth0 proto ${P}`]);
    s.delete("peer:a");
    expect(lines(s)).toEqual([`ip route replace 10.5.9.0/24 via 192.168.77.2 dev eth0 proto ${P}`]);
    s.set("peer:b", {}); // b stops desiring it too
    expect(lines(s)).toEqual([`ip route del 10.5.9.0/24 via 192.168.77.2 dev eth0 proto ${P}`]);
  });

  test("a removed peer: route, neighbour, then FDB", () => {
    const s = new DesiredState(P);
    s.set("peer:a", peer(2));
    lines(s);
    expect(s.delete("peer:a")).toBe(true);
    expect(s.delete("peer:a")).toBe(false);
    expect(lines(s)).toEqual([
      `ip route del 10.5.2.0/24 via 10.5.2.0 dev flannel.1 proto ${P}`,
      "ip neigh del 10.5.2.0 dev flannel.1",
      "bridge fdb del 02:00:00:00:00:12 dev flannel.1 dst 192.168.77.2 self",
    ]);
  });

  test("a failed command stays unapplied and is planned again", () => {
    const s = new DesiredState(P);
    s.set("peer:a", peer(2));
    const p = s.planPeers();
    s.peersDone(p, (i) => i !== 2); // the route failed
    expect(lines(s)).toEqual([]); // nothing dirty until something says so
    s.adoptKernel(
      {
        ...empty(),
        neighs: new Map([["flannel.1", peer(2).neighs!]]),
        fdbs: new Map([["flannel.1", peer(2).fdbs!]]),
      },
      ["flannel.1"],
    );
    expect(lines(s)).toEqual([`ip route replace 10.5.2.0/24 via 10.5.2.0 dev flannel.1 onlink proto ${P}`]);
    expect(s.resetCounts()).toEqual({ added: 1, removed: 0, repaired: 0 });
  });

  test("a streamed plan sends what was dirty when it was made; changes while it is pulled are the next plan's", () => {
    const s = new DesiredState(P);
    s.set("peer:a", peer(2));
    s.set("peer:b", peer(3));
    const plan = s.streamPeers();
    const it = plan.commands[Symbol.iterator]();
    expect(it.next().value!.line).toStartWith("fdb replace 02:00:00:00:00:12");
    s.delete("peer:a"); // while the queue still pulls: the stream keeps the values it took
    s.set("peer:c", peer(4));
    const rest: string[] = [];
    for (let r = it.next(); !r.done; r = it.next()) rest.push(`${r.value.tool} ${r.value.line}`);
    expect(rest.length).toBe(5);
    expect(rest.some((l) => l.includes("10.5.4."))).toBe(false);
    s.peersDone(plan, () => true);
    expect(lines(s)).toEqual([
      `ip route del 10.5.2.0/24 via 10.5.2.0 dev flannel.1 proto ${P}`,
      "ip neigh del 10.5.2.0 dev flannel.1",
      "bridge fdb del 02:00:00:00:00:12 dev flannel.1 dst 192.168.77.2 self",
      "bridge fdb replace 02:00:00:00:00:14 dev flannel.1 dst 192.168.77.4 self permanent",
      "ip neigh replace 10.5.4.0 lladdr 02:00:00:00:00:14 dev flannel.1 nud permanent",
      `ip route replace 10.5.4.0/24 via 10.5.4.0 dev flannel.1 onlink proto ${P}`,
    ]);
    expect(lines(s)).toEqual([]);
  });

  test("a plan is at most three processes: ip, bridge, ip (two when it only adds or only removes)", () => {
    const s = new DesiredState(P);
    // The tool of each line where it changes: the queue starts one process per run of same-tool lines.
    const runs = (ls: string[]) => ls.map((l) => l.split(" ")[0]).filter((t, i, ts) => i === 0 || t !== ts[i - 1]);
    s.set("peer:a", peer(2));
    s.set("peer:b", peer(3));
    expect(runs(lines(s))).toEqual(["bridge", "ip"]);
    s.delete("peer:a");
    s.set("peer:c", peer(4));
    const mixed = lines(s);
    expect(mixed.length).toBe(6);
    expect(runs(mixed)).toEqual(["ip", "bridge", "ip"]);
    s.delete("peer:b");
    expect(runs(lines(s))).toEqual(["ip", "bridge"]);
  });

  test("invalid fragments throw and change nothing", () => {
    const s = new DesiredState(P);
    expect(() => s.set("peer:x", { routes: [{ dst: "10.5.2.0/24; reboot", via: "1.2.3.4", dev: "eth0", onlink: false }] })).toThrow();
    expect(() => s.set("peer:x", { routes: "nope" as never })).toThrow(/must be an array/);
    expect(lines(s)).toEqual([]);
  });

  test("a full kernel view: hand-deleted entries are repaired, stale owned ones removed, foreign ones kept", () => {
    const s = new DesiredState(P);
    s.set("peer:a", peer(2));
    s.set("peer:b", peer(3));
    lines(s);
    const snap = empty();
    // peer a's route deleted by hand; peer 9 left while we were down; a learned-looking neighbour on another device.
    snap.routes = [
      { dst: "10.5.3.0/24", via: "10.5.3.0", dev: "flannel.1", onlink: true },
      { dst: "10.5.9.0/24", via: "10.5.9.0", dev: "flannel.1", onlink: true },
    ];
    snap.neighs = new Map([["flannel.1", [...peer(2).neighs!, ...peer(3).neighs!]]]);
    snap.fdbs = new Map([
      ["flannel.1", [...peer(2).fdbs!, ...peer(3).fdbs!, { dev: "flannel.1", mac: "02:00:00:00:00:12", dst: "192.168.77.99" }]],
    ]);
    s.adoptKernel(snap, ["flannel.1"]);
    expect(lines(s)).toEqual([
      `ip route del 10.5.9.0/24 via 10.5.9.0 dev flannel.1 proto ${P}`,
      "bridge fdb del 02:00:00:00:00:12 dev flannel.1 dst 192.168.77.99 self",
      `ip route replace 10.5.2.0/24 via 10.5.2.0 dev flannel.1 onlink proto ${P}`,
    ]);
    expect(s.resetCounts()).toEqual({ added: 0, removed: 2, repaired: 1 });
  });

  test("in sync, the applied view is the desired entries themselves; only what differs is kept, until applied", () => {
    const s = new DesiredState(P);
    const kept = () => [s.routes.appliedKept, s.neighs.appliedKept, s.fdbs.appliedKept];
    for (let i = 2; i <= 101; i++) s.set(`peer:${i}`, peer(i));
    expect(kept()).toEqual([100, 100, 100]); // desired, not applied yet
    expect(lines(s)).toHaveLength(300);
    expect(kept()).toEqual([0, 0, 0]);
    // A peer's VTEP moves: the old FDB entry is what the kernel has until the replace succeeds.
    s.set("peer:5", { ...peer(5), fdbs: [{ dev: "flannel.1", mac: "02:00:00:00:00:15", dst: "192.168.77.250" }] });
    expect(kept()).toEqual([0, 0, 1]);
    const k5 = [...s.fdbs.desired.keys()][3]!; // peers 2, 3, 4, 5
    const failed = s.planPeers();
    s.peersDone(failed, () => false);
    expect(s.fdbs.appliedGet(k5)?.dst).toBe("192.168.77.5");
    s.fdbs.dirty.add(k5); // as the next full reconcile would
    expect(lines(s)).toEqual(["bridge fdb replace 02:00:00:00:00:15 dev flannel.1 dst 192.168.77.250 self permanent"]);
    expect(kept()).toEqual([0, 0, 0]);
    // A removed peer: its entries are deleted with the values the kernel has, then nothing is kept for them.
    s.delete("peer:6");
    expect(kept()).toEqual([1, 1, 1]);
    expect(lines(s)).toEqual([
      `ip route del 10.5.6.0/24 via 10.5.6.0 dev flannel.1 proto ${P}`,
      "ip neigh del 10.5.6.0 dev flannel.1",
      "bridge fdb del 02:00:00:00:00:16 dev flannel.1 dst 192.168.77.6 self",
    ]);
    expect(kept()).toEqual([0, 0, 0]);
    // A full read that finds everything in place keeps nothing; one route missing is kept as missing and re-added.
    const all = [...s.routes.desired.values()].map((r) => ({ dst: r.dst, via: r.via, dev: r.dev, onlink: r.onlink }));
    const snap = (routes: typeof all): KernelSnapshot => ({
      ...empty(),
      routes,
      neighs: new Map([["flannel.1", [...s.neighs.desired.values()]]]),
      fdbs: new Map([["flannel.1", [...s.fdbs.desired.values()]]]),
    });
    s.adoptKernel(snap(all), ["flannel.1"]);
    expect(kept()).toEqual([0, 0, 0]);
    expect(lines(s)).toEqual([]);
    s.adoptKernel(snap(all.filter((r) => r.dst !== "10.5.7.0/24")), ["flannel.1"]);
    expect(kept()).toEqual([1, 0, 0]);
    expect(lines(s)).toEqual([`ip route replace 10.5.7.0/24 via 10.5.7.0 dev flannel.1 onlink proto ${P}`]);
    expect(kept()).toEqual([0, 0, 0]);
  });

  test("devicesToRead: owned devices and devices of desired keys that exist", () => {
    const s = new DesiredState(P);
    s.set("peer:a", { neighs: [{ dev: "eth1", ip: "10.0.0.1", lladdr: "02:00:00:00:00:aa" }] });
    expect(s.devicesToRead(["flannel.1", "gone0"], new Set(["flannel.1", "eth1"]))).toEqual({
      neighDevs: ["flannel.1", "eth1"],
      fdbDevs: ["flannel.1"],
    });
  });
});

describe("DesiredState device step", () => {
  const step = (s: DesiredState, links: KLink[]) => {
    const w = s.takeDeviceWork();
    const p = s.planDevices(w, links, ["flannel.1"]);
    s.devicesDone(w, p, true);
    return p.cmds.map((c) => c.line);
  };

  test("a missing device is created with its address and set up", () => {
    const s = new DesiredState(P);
    s.set("local", local);
    expect(s.hasDeviceWork()).toBe(true);
    expect(step(s, [])).toEqual([
      "link add flannel.1 address 02:00:00:00:00:01 mtu 1450 type vxlan id 1 local 192.168.77.1 dev eth0 nolearning dstport 0",
      "addr replace 10.5.1.0/32 dev flannel.1",
      "link set dev flannel.1 up",
    ]);
    expect(s.hasDeviceWork()).toBe(false);
  });

  test("a compatible device (ours from before, or flanneld's) is kept; only MTU, MAC, learning and up are fixed", () => {
    const s = new DesiredState(P);
    s.set("local", local);
    expect(step(s, [vxlanLink()])).toEqual([]);
    s.set("local", { ...local, devices: [{ ...dev, mtu: 1400 }] });
    expect(step(s, [vxlanLink({ flags: ["BROADCAST"], addr_info: [] })])).toEqual([
      "link set dev flannel.1 mtu 1400",
      "addr replace 10.5.1.0/32 dev flannel.1",
      "link set dev flannel.1 up",
    ]);
  });

  test("an incompatible device (other VNI, port or local IP) is recreated, and its peer entries re-added", () => {
    const s = new DesiredState(P);
    s.set("local", local);
    s.set("peer:a", peer(2));
    step(s, [vxlanLink()]);
    lines(s);
    for (const data of [{ id: 2 }, { port: 4789 }, { local: "192.168.77.5" }, { gbp: true }]) {
      s.adoptKernel(empty(), ["flannel.1"]); // dirties the device
      lines(s);
      const w = s.takeDeviceWork();
      const p = s.planDevices(w, [vxlanLink({}, data)], ["flannel.1"]);
      expect(p.cmds[0]!.line).toBe("link del flannel.1");
      expect(p.notes[0]).toContain("incompatible");
      s.devicesDone(w, p, true);
      expect(lines(s)).toHaveLength(3); // neighbour, FDB and route again on the new device
    }
  });

  test("a failed device step is taken on again by the next one", () => {
    const s = new DesiredState(P);
    s.set("local", local);
    const w = s.takeDeviceWork();
    const p = s.planDevices(w, [], ["flannel.1"]);
    s.devicesDone(w, p, false);
    expect(s.hasDeviceWork()).toBe(true);
    expect(step(s, [])[0]).toStartWith("link add flannel.1");
  });

  test("foreign addresses on owned devices go; on other devices only the ones we desired before", () => {
    const s = new DesiredState(P);
    s.set("local", local);
    const extra = vxlanLink({
      addr_info: [
        { local: "10.5.1.0", prefixlen: 32, scope: "global" },
        { local: "10.9.9.9", prefixlen: 32, scope: "global" },
      ],
    });
    expect(step(s, [extra])).toEqual(["addr del 10.9.9.9/32 dev flannel.1"]);
  });
});

describe("kernel-read parsing", () => {
  test("routes: default and host routes become CIDRs; junk is dropped", () => {
    expect(parseRoute({ dst: "default", gateway: "10.0.0.1", dev: "eth0", flags: [] }, 4)).toEqual({
      dst: "0.0.0.0/0",
      via: "10.0.0.1",
      dev: "eth0",
      onlink: false,
    });
    expect(parseRoute({ dst: "10.5.2.0", flags: ["onlink"] }, 4)).toEqual({ dst: "10.5.2.0/32", onlink: true });
    expect(parseRoute({ dst: "fd00::", dev: "eth0" }, 6)?.dst).toBe("fd00::/128");
    expect(parseRoute({ dst: "10.5.2.0/24", dev: "bad dev" }, 4)).toBeNull();
    expect(parseRoute({ dst: 7 }, 4)).toBeNull();
  });

  test("neighbours: only PERMANENT, valid ones", () => {
    expect(
      parseNeighs("flannel.1", [
        { dst: "10.5.2.0", lladdr: "02:00:00:00:00:12", state: ["PERMANENT"] },
        { dst: "10.5.3.0", lladdr: "02:00:00:00:00:13", state: ["REACHABLE"] },
        { dst: "10.5.4.0", lladdr: "zz", state: ["PERMANENT"] },
        null,
        "x",
      ]),
    ).toEqual([{ dev: "flannel.1", ip: "10.5.2.0", lladdr: "02:00:00:00:00:12" }]);
    expect(parseNeighs("flannel.1", { not: "a list" })).toEqual([]);
  });

  test("fdb: only permanent entries with a remote", () => {
    expect(
      parseFdbs("flannel.1", [
        { mac: "02:00:00:00:00:12", dst: "192.168.77.2", state: "permanent" },
        { mac: "02:00:00:00:00:13", dst: "192.168.77.3" },
        { mac: "00:00:00:00:00:00", state: "permanent" },
      ]),
    ).toEqual([{ dev: "flannel.1", mac: "02:00:00:00:00:12", dst: "192.168.77.2" }]);
  });
});
