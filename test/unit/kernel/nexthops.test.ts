// Peer routes through nexthop objects: the pure diff's plans, the kernel view it adopts and the events it repairs
// from, without root or iproute2 (the kernel side is test/kernel/reconciler.test.ts and monitor.test.ts).
import { describe, expect, test } from "bun:test";
import { nexthopDel, nexthopReplace, routeDel, routeReplaceNh } from "../../../src/kernel/commands.ts";
import { DesiredState, type KernelSnapshot } from "../../../src/kernel/diff.ts";
import { type KNexthop, type KRoute, parseNexthop, parseRoute } from "../../../src/kernel/kernel-read.ts";
import { parseIpMonitorLine } from "../../../src/kernel/monitor-events.ts";
import { NEXTHOP_ID_BASE as B, ROUTE_PROTO as P, type StateFragment } from "../../../src/kernel/types.ts";

const mac = (i: number) => `02:00:00:00:00:${(16 + i).toString(16)}`;
const vx = (i: number): StateFragment => ({
  neighs: [{ dev: "flannel.1", ip: `10.5.${i}.0`, lladdr: mac(i) }],
  fdbs: [{ dev: "flannel.1", mac: mac(i), dst: `192.168.77.${i}` }],
  routes: [{ dst: `10.5.${i}.0/24`, via: `10.5.${i}.0`, dev: "flannel.1", onlink: true }],
});
const hg = (i: number, via = `192.168.77.${10 + i}`): StateFragment => ({
  routes: [{ dst: `10.5.${i}.0/24`, via, dev: "eth0", onlink: false }],
});
const lines = (s: DesiredState, ok: (i: number) => boolean = () => true) => {
  const p = s.planPeers();
  s.peersDone(p, ok);
  return p.cmds.map((c) => c.line);
};
const nhState = (existing: KNexthop[] = []) => {
  const s = new DesiredState(P);
  s.useNexthops(existing);
  return s;
};
const snap = (routes: KRoute[], nexthops: KNexthop[]): KernelSnapshot => ({
  present: new Set(["flannel.1", "eth0"]),
  routes,
  neighs: new Map(),
  fdbs: new Map(),
  nexthops,
});
const ourNh = (id: number, via: string, dev = "eth0", onlink = false): KNexthop => ({ id, proto: P, via, dev, onlink, special: false });

describe("commands", () => {
  test("nexthop and route-through-nexthop lines; a route through a nexthop is deleted by its nhid", () => {
    expect(nexthopReplace({ id: B, via: "10.5.2.0", dev: "flannel.1", onlink: true }, P).line).toBe(
      `nexthop replace id ${B} via 10.5.2.0 dev flannel.1 onlink proto ${P}`,
    );
    expect(nexthopDel(B + 1).line).toBe(`nexthop del id ${B + 1}`);
    expect(nexthopDel(B).absentOk).toBe(true);
    expect(routeReplaceNh({ dst: "10.5.2.0/24", via: "10.5.2.0", dev: "flannel.1", onlink: true }, B, P).line).toBe(
      `route replace 10.5.2.0/24 nhid ${B} proto ${P}`,
    );
    expect(routeDel({ dst: "10.5.2.0/24", via: "10.5.2.0", dev: "flannel.1", nhid: B }, P).line).toBe(
      `route del 10.5.2.0/24 nhid ${B} proto ${P}`,
    );
    expect(() => nexthopReplace({ id: 0, via: "10.5.2.0", dev: "flannel.1", onlink: true }, P)).toThrow("nexthop id");
    expect(() => nexthopReplace({ id: B, via: "10.5.2.0 blackhole", dev: "flannel.1", onlink: true }, P)).toThrow("nexthop via");
    expect(() => routeReplaceNh({ dst: "10.5.2.0/24", via: "10.5.2.0", dev: "flannel.1", onlink: true }, 2 ** 32, P)).toThrow("nexthop id");
  });

  test("kernel output: nhid on routes, nexthops with protocol, groups and blackholes marked special", () => {
    expect(parseRoute({ dst: "10.5.2.0/24", nhid: B, gateway: "10.5.2.0", dev: "flannel.1", flags: ["onlink"] }, 4)).toEqual({
      dst: "10.5.2.0/24",
      via: "10.5.2.0",
      dev: "flannel.1",
      onlink: true,
      nhid: B,
    });
    expect(parseRoute({ dst: "10.5.2.0/24", nhid: "7; x", dev: "flannel.1" }, 4)).toBeNull();
    expect(parseNexthop({ id: 7, gateway: "192.0.2.9", dev: "eth0", scope: "link", protocol: "159", flags: [] })).toEqual({
      id: 7,
      proto: 159,
      via: "192.0.2.9",
      dev: "eth0",
      onlink: false,
      special: false,
    });
    expect(parseNexthop({ id: 8, blackhole: null, flags: [] })).toEqual({ id: 8, onlink: false, special: true });
    expect(parseNexthop({ id: 9, group: [{ id: 7 }], protocol: "zebra" })?.special).toBe(true);
    expect(parseNexthop({ id: 9, group: [{ id: 7 }], protocol: "zebra" })?.proto).toBeUndefined();
    expect(parseNexthop({ id: 0, gateway: "192.0.2.9" })).toBeNull();
  });

  test("the monitor's nexthop deletion line", () => {
    expect(parseIpMonitorLine("[NEXTHOP]Deleted id 7 via 192.0.2.9 dev eth0 scope link proto 159 ")).toEqual({
      kind: "nexthop",
      deleted: true,
      id: 7,
    });
    expect(parseIpMonitorLine("[NEXTHOP]id 7 via 192.0.2.9 dev eth0 scope link proto 159")).toBeNull(); // an addition
    expect(parseIpMonitorLine("[NEXTHOP]Deleted id x7 via 192.0.2.9")).toBeNull();
    expect(parseIpMonitorLine("[NEXTHOP]Deleted id 99999999999 via 192.0.2.9")).toBeNull();
    expect(parseIpMonitorLine(`[ROUTE]Deleted 10.5.2.0/24 nhid ${B} via 10.5.2.0 dev flannel.1 proto 159 onlink `)).toEqual({
      kind: "route",
      deleted: true,
      dst: "10.5.2.0/24",
      dev: "flannel.1",
    });
  });
});

describe("DesiredState with nexthop objects", () => {
  test("a new vxlan peer: FDB, neighbour, its nexthop, then the route through it; again changes nothing", () => {
    const s = nhState();
    s.set("peer:a", vx(2));
    expect(lines(s)).toEqual([
      `fdb replace ${mac(2)} dev flannel.1 dst 192.168.77.2 self permanent`,
      `neigh replace 10.5.2.0 lladdr ${mac(2)} dev flannel.1 nud permanent`,
      `nexthop replace id ${B} via 10.5.2.0 dev flannel.1 onlink proto ${P}`,
      `route replace 10.5.2.0/24 nhid ${B} proto ${P}`,
    ]);
    s.set("peer:a", vx(2));
    expect(lines(s)).toEqual([]);
  });

  test("a removed peer: route, neighbour, FDB, then its nexthop; the id is free again", () => {
    const s = nhState();
    s.set("peer:a", vx(2));
    lines(s);
    s.delete("peer:a");
    expect(lines(s)).toEqual([
      `route del 10.5.2.0/24 nhid ${B} proto ${P}`,
      "neigh del 10.5.2.0 dev flannel.1",
      `fdb del ${mac(2)} dev flannel.1 dst 192.168.77.2 self`,
      `nexthop del id ${B}`,
    ]);
    expect(s.nexthops.entries.size).toBe(0);
    s.set("peer:b", hg(3));
    expect(lines(s)).toEqual([
      `nexthop replace id ${B + 1} via 192.168.77.13 dev eth0 proto ${P}`,
      `route replace 10.5.3.0/24 nhid ${B + 1} proto ${P}`,
    ]);
  });

  test("a peer's gateway changes: new nexthop, the route moved onto it, then the old nexthop deleted", () => {
    const s = nhState();
    s.set("peer:a", hg(1));
    lines(s);
    s.set("peer:a", hg(1, "192.168.77.99"));
    expect(lines(s)).toEqual([
      `nexthop replace id ${B + 1} via 192.168.77.99 dev eth0 proto ${P}`,
      `route replace 10.5.1.0/24 nhid ${B + 1} proto ${P}`,
      `nexthop del id ${B}`,
    ]);
  });

  test("two routes through one gateway share a nexthop, deleted only with the last route", () => {
    const s = nhState();
    s.set("peer:a", hg(1, "192.168.77.50"));
    s.set("peer:b", hg(2, "192.168.77.50"));
    expect(lines(s)).toEqual([
      `nexthop replace id ${B} via 192.168.77.50 dev eth0 proto ${P}`,
      `route replace 10.5.1.0/24 nhid ${B} proto ${P}`,
      `route replace 10.5.2.0/24 nhid ${B} proto ${P}`,
    ]);
    s.delete("peer:a");
    expect(lines(s)).toEqual([`route del 10.5.1.0/24 nhid ${B} proto ${P}`]);
    s.delete("peer:b");
    expect(lines(s)).toEqual([`route del 10.5.2.0/24 nhid ${B} proto ${P}`, `nexthop del id ${B}`]);
  });

  test("a failed nexthop is sent again with its route next time", () => {
    const s = nhState();
    s.set("peer:a", hg(1));
    expect(lines(s, () => false)).toHaveLength(2);
    s.adoptKernel(snap([], []), []);
    expect(lines(s)).toEqual([
      `nexthop replace id ${B} via 192.168.77.11 dev eth0 proto ${P}`,
      `route replace 10.5.1.0/24 nhid ${B} proto ${P}`,
    ]);
  });

  test("ids: others' are skipped and never touched; ours from a previous run are adopted with their routes", () => {
    const other: KNexthop = { id: B, proto: 3, via: "192.168.77.40", dev: "eth0", onlink: false, special: false };
    const prev = ourNh(B + 1, "192.168.77.11");
    const s = nhState([other, prev]);
    s.set("peer:a", hg(1)); // through the adopted B+1
    s.set("peer:b", hg(2)); // a new one: neither B (someone else's) nor B+1
    expect(lines(s)).toEqual([
      `route replace 10.5.1.0/24 nhid ${B + 1} proto ${P}`,
      `nexthop replace id ${B + 2} via 192.168.77.12 dev eth0 proto ${P}`,
      `route replace 10.5.2.0/24 nhid ${B + 2} proto ${P}`,
    ]);
  });

  test("ids far apart and outside our range (ours by protocol) are found again by the kernel's events", () => {
    const low = ourNh(77, "192.168.77.11"); // our protocol, an id below our range: adopted as it is
    const far = ourNh(B + 5_000_000, "192.168.77.12");
    const s = nhState([low, far]);
    s.set("peer:a", hg(1));
    s.set("peer:b", hg(2));
    s.set("peer:c", hg(3)); // a new one: the first free id of our range
    expect(lines(s).filter((l) => l.startsWith("nexthop"))).toEqual([`nexthop replace id ${B} via 192.168.77.13 dev eth0 proto ${P}`]);
    for (const [id, via] of [
      [77, "192.168.77.11"],
      [B + 5_000_000, "192.168.77.12"],
      [B, "192.168.77.13"],
    ] as const) {
      expect(s.noticeEvent({ kind: "nexthop", deleted: true, id })).toBe(true);
      expect(lines(s)[0]).toBe(`nexthop replace id ${id} via ${via} dev eth0 proto ${P}`);
    }
    s.delete("peer:c");
    expect(lines(s)).toContain(`nexthop del id ${B}`);
    expect(s.noticeEvent({ kind: "nexthop", deleted: true, id: B })).toBe(false); // forgotten with its last route
  });

  test("start-up adopts but never deletes; the full reconcile removes ours that nobody wants, keeps others'", () => {
    const other: KNexthop = { id: B + 7, proto: 3, via: "192.168.77.40", dev: "eth0", onlink: false, special: false };
    const blackhole: KNexthop = { id: B + 8, proto: P, onlink: false, special: true };
    const stale = ourNh(B + 5, "192.168.77.66");
    const s = nhState([other, blackhole, stale]);
    expect(lines(s)).toEqual([]); // nothing desired yet: a restart deletes nothing before the peers are known
    s.set("peer:a", hg(1));
    lines(s);
    const r1: KRoute = { dst: "10.5.1.0/24", via: "192.168.77.11", dev: "eth0", onlink: false, nhid: B };
    s.adoptKernel(snap([r1], [other, blackhole, stale, ourNh(B, "192.168.77.11")]), []);
    expect(s.resetCounts()).toEqual({ added: 0, removed: 2, repaired: 0 });
    expect(lines(s).sort()).toEqual([`nexthop del id ${B + 5}`, `nexthop del id ${B + 8}`]);
  });

  test("a plain gateway route (flanneld's or an older flannel-bin's) is replaced in place, counted as repaired", () => {
    const s = nhState();
    s.set("peer:a", vx(2));
    s.adoptKernel(
      {
        ...snap([{ dst: "10.5.2.0/24", via: "10.5.2.0", dev: "flannel.1", onlink: true }], []),
        neighs: new Map([["flannel.1", [{ dev: "flannel.1", ip: "10.5.2.0", lladdr: mac(2) }]]]),
        fdbs: new Map([["flannel.1", [{ dev: "flannel.1", mac: mac(2), dst: "192.168.77.2" }]]]),
      },
      ["flannel.1"],
    );
    expect(s.resetCounts()).toEqual({ added: 0, removed: 0, repaired: 1 });
    // No delete: `route replace` swaps the route atomically, so no packet is lost on the way.
    expect(lines(s)).toEqual([
      `nexthop replace id ${B} via 10.5.2.0 dev flannel.1 onlink proto ${P}`,
      `route replace 10.5.2.0/24 nhid ${B} proto ${P}`,
    ]);
    // A route through someone else's nexthop with the right gateway is not ours to keep either.
    s.adoptKernel(
      snap([{ dst: "10.5.2.0/24", via: "10.5.2.0", dev: "flannel.1", onlink: true, nhid: 42 }], [ourNh(B, "10.5.2.0", "flannel.1", true)]),
      ["flannel.1"],
    );
    expect(lines(s).filter((l) => l.startsWith("route"))).toEqual([`route replace 10.5.2.0/24 nhid ${B} proto ${P}`]);
  });

  test("our nexthop deleted by hand: its routes come back with it (the kernel says nothing of them)", () => {
    const s = nhState();
    s.set("peer:a", hg(1, "192.168.77.50"));
    s.set("peer:b", hg(2, "192.168.77.50"));
    s.set("peer:c", hg(3));
    lines(s);
    expect(s.noticeEvent({ kind: "nexthop", deleted: true, id: B })).toBe(true);
    expect(lines(s)).toEqual([
      `nexthop replace id ${B} via 192.168.77.50 dev eth0 proto ${P}`,
      `route replace 10.5.1.0/24 nhid ${B} proto ${P}`,
      `route replace 10.5.2.0/24 nhid ${B} proto ${P}`,
    ]);
    expect(s.noticeEvent({ kind: "nexthop", deleted: true, id: 12345 })).toBe(false); // not ours
    // Our own delete's echo costs nothing: the nexthop is marked gone when the delete is planned.
    s.delete("peer:c");
    const p = s.planPeers();
    expect(s.noticeEvent({ kind: "nexthop", deleted: true, id: B + 1 })).toBe(false);
    s.peersDone(p, () => true);
    expect(lines(s)).toEqual([]);
  });

  test("all our nexthops flushed by hand (one event each): one plan puts every nexthop and route back", () => {
    const s = nhState();
    for (let i = 1; i <= 50; i++) s.set(`peer:${i}`, hg(i));
    lines(s);
    for (let i = 0; i < 50; i++) expect(s.noticeEvent({ kind: "nexthop", deleted: true, id: B + i })).toBe(true);
    const l = lines(s);
    expect(l.filter((x) => x.startsWith("nexthop replace"))).toHaveLength(50);
    expect(l.filter((x) => x.startsWith("route replace"))).toHaveLength(50);
    expect(lines(s)).toEqual([]);
  });

  test("a route deleted by hand comes back through the nexthop that is still there", () => {
    const s = nhState();
    s.set("peer:a", vx(2));
    lines(s);
    expect(s.noticeEvent({ kind: "route", deleted: true, dst: "10.5.2.0/24", dev: "flannel.1" })).toBe(true);
    expect(lines(s)).toEqual([`route replace 10.5.2.0/24 nhid ${B} proto ${P}`]);
  });

  test("in sync, routes through nexthops keep nothing beside the desired ones; a moved or lost one is kept until redone", () => {
    const s = nhState();
    for (let i = 1; i <= 20; i++) s.set(`peer:${i}`, hg(i));
    lines(s);
    expect(s.routes.appliedKept).toBe(0);
    // A gateway change: until the route is moved, the kernel's route is the old one, through the old nexthop.
    s.set("peer:3", hg(3, "192.168.77.99"));
    expect(s.routes.appliedKept).toBe(1);
    expect(lines(s).filter((l) => l.startsWith("route"))).toEqual([`route replace 10.5.3.0/24 nhid ${B + 20} proto ${P}`]);
    expect(s.routes.appliedKept).toBe(0);
    // Its new nexthop deleted by hand: the route went with it and is redone through it.
    expect(s.noticeEvent({ kind: "nexthop", deleted: true, id: B + 20 })).toBe(true);
    expect(lines(s)).toEqual([
      `nexthop replace id ${B + 20} via 192.168.77.99 dev eth0 proto ${P}`,
      `route replace 10.5.3.0/24 nhid ${B + 20} proto ${P}`,
    ]);
    expect(s.routes.appliedKept).toBe(0);
  });

  test("a link going down takes its nexthops silently: when it comes up, nexthops and routes are sent again", () => {
    const s = nhState();
    s.set("peer:a", hg(1));
    lines(s);
    expect(s.noticeEvent({ kind: "link", deleted: false, dev: "eth0", up: false })).toBe(false);
    expect(s.noticeEvent({ kind: "link", deleted: false, dev: "eth0", up: true })).toBe(true);
    expect(lines(s)).toEqual([
      `nexthop replace id ${B} via 192.168.77.11 dev eth0 proto ${P}`,
      `route replace 10.5.1.0/24 nhid ${B} proto ${P}`,
    ]);
  });

  test("turned on after peers were set: their routes go through nexthops; without it, plain routes, never a nexthop", () => {
    const s = new DesiredState(P);
    s.set("peer:a", hg(1));
    const plain = new DesiredState(P);
    plain.set("peer:a", hg(1));
    expect(lines(plain)).toEqual([`route replace 10.5.1.0/24 via 192.168.77.11 dev eth0 proto ${P}`]);
    // Plain mode: a route through a nexthop (left by a run with nexthops) is not right; it is replaced by a plain one.
    plain.adoptKernel(snap([{ dst: "10.5.1.0/24", via: "192.168.77.11", dev: "eth0", onlink: false, nhid: B }], []), []);
    expect(lines(plain)).toEqual([`route replace 10.5.1.0/24 via 192.168.77.11 dev eth0 proto ${P}`]);
    s.useNexthops([]);
    expect(s.usesNexthops).toBe(true);
    expect(lines(s)).toEqual([
      `nexthop replace id ${B} via 192.168.77.11 dev eth0 proto ${P}`,
      `route replace 10.5.1.0/24 nhid ${B} proto ${P}`,
    ]);
  });
});
