// Monitor lines (as iproute2 6.1 prints them) -> events, and the repairs DesiredState marks for them.
import { describe, expect, test } from "bun:test";
import { DesiredState } from "../../../src/kernel/diff.ts";
import { parseFdbMonitorLine, parseIpMonitorLine } from "../../../src/kernel/monitor-events.ts";
import { ROUTE_PROTO, type StateFragment } from "../../../src/kernel/types.ts";
import { vxlanDevice } from "../../helpers/kernel-fixtures.ts";

describe("monitor lines", () => {
  test("deletions of routes, neighbours, addresses; link changes", () => {
    expect(parseIpMonitorLine("[ROUTE]Deleted 10.8.0.0/24 via 10.9.0.2 dev d0 proto 159 ")).toEqual({
      kind: "route",
      deleted: true,
      dst: "10.8.0.0/24",
      dev: "d0",
    });
    expect(parseIpMonitorLine("[ROUTE]Deleted 10.8.0.7 via 10.9.0.2 dev d0 proto 159")?.kind).toBe("route");
    expect(parseIpMonitorLine("[NEIGH]Deleted 10.9.0.5 dev d0 lladdr 02:00:00:00:00:05 PERMANENT ")).toEqual({
      kind: "neigh",
      deleted: true,
      dev: "d0",
      ip: "10.9.0.5",
    });
    expect(parseIpMonitorLine("[ADDR]Deleted 6: vx0    inet 10.7.0.0/32 scope global vx0\\       valid_lft forever")).toEqual({
      kind: "addr",
      deleted: true,
      dev: "vx0",
    });
    expect(
      parseIpMonitorLine("[LINK]5: d0@d1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP group default \\"),
    ).toEqual({
      kind: "link",
      deleted: false,
      dev: "d0",
      up: true,
    });
    // Administratively up: losing carrier does not drop routes, only setting the link down does.
    expect(parseIpMonitorLine("[LINK]5: d0@d1: <NO-CARRIER,BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 state LOWERLAYERDOWN")).toMatchObject({
      up: true,
    });
    expect(parseIpMonitorLine("[LINK]5: d0@d1: <BROADCAST,MULTICAST> mtu 1500 qdisc noqueue state DOWN")).toMatchObject({ up: false });
    expect(parseIpMonitorLine("[LINK]Deleted 6: flannel.1: <BROADCAST,MULTICAST> mtu 1450 qdisc noop state DOWN")).toEqual({
      kind: "link",
      deleted: true,
      dev: "flannel.1",
      up: false,
    });
  });

  test("additions, other tables and route types, and junk are ignored", () => {
    for (const l of [
      "[ROUTE]10.6.0.0/24 via 10.9.0.2 dev d0 proto 159 ",
      "[ROUTE]Deleted local 10.7.0.0 dev vx0 table local proto kernel scope host src 10.7.0.0",
      "[ROUTE]Deleted 10.1.0.0/24 dev d0 table 100",
      "[ROUTE]Deleted default via 10.0.0.1 dev eth0",
      "[NEIGH]10.9.0.5 dev d0 lladdr 02:00:00:00:00:05 PERMANENT",
      "[NEIGH]Deleted 10.9.0.5 dev d0;reboot FAILED",
      "[LINK]5: bad name: <UP>",
      "[XFRM]Deleted something",
      "Deleted 10.8.0.0/24 dev d0",
      "",
      "[ROUTE]Deleted 999.1.1.1/24 dev d0",
    ])
      expect(parseIpMonitorLine(l)).toBeNull();
  });

  test("bridge fdb", () => {
    expect(parseFdbMonitorLine("Deleted 02:00:00:00:00:07 dev vx0 dst 10.9.0.7 self permanent")).toEqual({
      kind: "fdb",
      deleted: true,
      dev: "vx0",
      mac: "02:00:00:00:00:07",
      dst: "10.9.0.7",
    });
    expect(parseFdbMonitorLine("02:00:00:00:00:07 dev vx0 dst 10.9.0.7 self permanent")).toBeNull();
    expect(parseFdbMonitorLine("Deleted zz dev vx0 dst 10.9.0.7 self permanent")).toBeNull();
    expect(parseFdbMonitorLine("Deleted 02:00:00:00:00:07 dev vx0 dst nope self")).toBeNull();
  });
});

const local: StateFragment = { devices: [vxlanDevice({ underlay: "eth0" })] };
const peer: StateFragment = {
  neighs: [{ dev: "flannel.1", ip: "10.5.2.0", lladdr: "02:00:00:00:00:12" }],
  fdbs: [{ dev: "flannel.1", mac: "02:00:00:00:00:12", dst: "192.168.77.2" }],
  routes: [{ dst: "10.5.2.0/24", via: "10.5.2.0", dev: "flannel.1", onlink: true }],
};
function applied(): DesiredState {
  const s = new DesiredState(ROUTE_PROTO);
  s.set("local", local);
  s.set("peer:a", peer);
  const w = s.takeDeviceWork();
  s.devicesDone(w, s.planDevices(w, [], ["flannel.1"]), true);
  const p = s.planPeers();
  s.peersDone(p, () => true);
  return s;
}
const next = (s: DesiredState) => s.planPeers().cmds.map((c) => c.line.split(" ").slice(0, 2).join(" "));

describe("repairs from events", () => {
  test("a route, neighbour or fdb entry deleted by hand is re-added, alone", () => {
    const s = applied();
    expect(s.noticeEvent({ kind: "route", deleted: true, dst: "10.5.2.0/24", dev: "flannel.1" })).toBe(true);
    expect(next(s)).toEqual(["route replace"]);
    expect(s.noticeEvent({ kind: "neigh", deleted: true, dev: "flannel.1", ip: "10.5.2.0" })).toBe(true);
    expect(next(s)).toEqual(["neigh replace"]);
    expect(s.noticeEvent({ kind: "fdb", deleted: true, dev: "flannel.1", mac: "02:00:00:00:00:12", dst: "192.168.77.2" })).toBe(true);
    expect(next(s)).toEqual(["fdb replace"]);
  });

  test("deletions of what we do not have, or of another remote, change nothing", () => {
    const s = applied();
    expect(s.noticeEvent({ kind: "route", deleted: true, dst: "10.5.3.0/24" })).toBe(false);
    expect(s.noticeEvent({ kind: "route", deleted: true, dst: "10.5.2.0/24", dev: "eth9" })).toBe(false);
    expect(s.noticeEvent({ kind: "fdb", deleted: true, dev: "flannel.1", mac: "02:00:00:00:00:12", dst: "192.168.77.9" })).toBe(false);
    expect(s.noticeEvent({ kind: "addr", deleted: true, dev: "eth0" })).toBe(false);
    expect(next(s)).toEqual([]);
  });

  test("our device deleted or set down: the device step runs; deleted, its entries come back on the new one", () => {
    const s = applied();
    expect(s.noticeEvent({ kind: "link", deleted: false, dev: "flannel.1", up: false })).toBe(true);
    expect(s.hasDeviceWork()).toBe(true);
    s.takeDeviceWork();
    expect(s.noticeEvent({ kind: "link", deleted: true, dev: "flannel.1", up: false })).toBe(true);
    const w = s.takeDeviceWork();
    const plan = s.planDevices(w, [], ["flannel.1"]);
    expect(plan.cmds[0]!.line).toStartWith("link add flannel.1");
    s.devicesDone(w, plan, true);
    expect(next(s)).toEqual(["fdb replace", "neigh replace", "route replace"]);
  });

  test("the underlay coming back up re-applies entries on it and on the vxlan device riding on it", () => {
    const s = applied();
    expect(s.noticeEvent({ kind: "link", deleted: false, dev: "eth0", up: true })).toBe(false); // first sight: no transition
    expect(s.noticeEvent({ kind: "link", deleted: false, dev: "eth0", up: false })).toBe(false);
    expect(s.noticeEvent({ kind: "link", deleted: false, dev: "eth0", up: true })).toBe(true);
    expect(s.hasDeviceWork()).toBe(true);
    expect(next(s)).toEqual(["fdb replace", "neigh replace", "route replace"]);
  });
});
