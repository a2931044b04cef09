// Event-driven repair against real iproute2 in a throw-away namespace: the kernel monitor reports what was removed
// by hand and the reconciler puts back only that, with no full reconcile (the period is an hour here).
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { CommandQueue, bridgeJson, ipJson } from "../../src/kernel/queue.ts";
import { Reconciler } from "../../src/kernel/reconciler.ts";
import { ROUTE_PROTO, type StateFragment } from "../../src/kernel/types.ts";
import { makeNs, type TestNs } from "./netns.ts";
import { hostgwPeerState, vxlanDevice, vxlanPeerState } from "../helpers/kernel-fixtures.ts";

let ns: TestNs;
beforeAll(() => {
  ns = makeNs();
});
afterAll(() => ns?.remove());

const made: { q: CommandQueue; r: Reconciler }[] = [];
afterEach(() => {
  for (const { q, r } of made.splice(0)) {
    r.stop();
    q.close();
  }
  ns.flushOurs(ROUTE_PROTO);
  for (const l of JSON.parse(ns.ip("-j", "link", "show")) as { ifname: string }[])
    if (l.ifname !== "lo" && l.ifname !== "ul0") Bun.spawnSync(["ip", "-n", ns.name, "link", "del", l.ifname]);
});

async function started(owned: string[] = ["flannel.1"], nexthops?: boolean): Promise<Reconciler> {
  const q = new CommandQueue({ netns: ns.name, retryBaseMs: 10, maxRetries: 2 });
  const r = new Reconciler(q, { ownedDevices: owned, netns: ns.name, coalesceMs: 1, fullIntervalMs: 3_600_000, nexthops });
  made.push({ q, r });
  return r;
}

const vxdev = vxlanDevice();
const local: StateFragment = { devices: [vxdev], addresses: [{ dev: "flannel.1", cidr: "10.5.52.0/32" }] };
const mac = (i: number) => `02:bb:00:00:00:${i.toString(16).padStart(2, "0")}`;
const vxpeer = (i: number): StateFragment => vxlanPeerState(`10.5.${i}.0`, mac(i), `192.168.77.${10 + i}`);
const hostgw = (i: number): StateFragment => hostgwPeerState(`10.5.${i}.0`, `192.168.77.${10 + i}`);

type JRoute = { dst: string; dev: string; gateway?: string; nhid?: number };
const ourRoutes = async () => (await ipJson(["route", "show", "proto", String(ROUTE_PROTO)], ns.name)) as JRoute[];
const routes = async () => (await ourRoutes()).map((r) => `${r.dst} ${r.dev}`).sort();
const nhidOf = async (dst: string) => (await ourRoutes()).find((r) => r.dst === dst)?.nhid;
const neighs = async () =>
  ((await ipJson(["neigh", "show", "dev", "flannel.1", "nud", "permanent"], ns.name)) as { dst: string }[]).map((n) => n.dst).sort();
const fdbs = async () =>
  ((await bridgeJson(["fdb", "show", "dev", "flannel.1"], ns.name)) as { mac: string; dst?: string }[])
    .filter((f) => f.dst)
    .map((f) => `${f.mac} ${f.dst}`)
    .sort();
const addrs = async () =>
  ((await ipJson(["addr", "show", "dev", "flannel.1"], ns.name)) as { addr_info: { local: string; scope: string }[] }[])[0]!.addr_info
    .filter((a) => a.scope === "global")
    .map((a) => a.local);

/** Polls `check` every 50 ms for at most 2 s (the e2e bound); returns how long it took, or -1. */
async function within2s(check: () => Promise<boolean>): Promise<number> {
  const t0 = Date.now();
  for (let i = 0; i < 40; i++) {
    if (await check()) return Date.now() - t0;
    await Bun.sleep(50);
  }
  return -1;
}

async function vxlanUp(nexthops?: boolean): Promise<Reconciler> {
  const r = await started(["flannel.1"], nexthops);
  r.set("local", local);
  r.set("peer:7", vxpeer(7));
  r.set("peer:8", vxpeer(8));
  await r.flush();
  await r.fullReconcile();
  r.start();
  await Bun.sleep(200); // let the monitors subscribe
  return r;
}
const all7and8 = async () =>
  (await routes()).join() === "10.5.7.0/24 flannel.1,10.5.8.0/24 flannel.1" &&
  (await neighs()).join() === "10.5.7.0,10.5.8.0" &&
  (await fdbs()).join() === `${mac(7)} 192.168.77.17,${mac(8)} 192.168.77.18`;

describe("kernel monitor repair", () => {
  test("a route, a neighbour and an fdb entry deleted by hand come back, without a full reconcile", async () => {
    const r = await vxlanUp();
    expect(await all7and8()).toBe(true);
    ns.ip("route", "del", "10.5.7.0/24", "proto", String(ROUTE_PROTO));
    expect(await within2s(all7and8)).toBeGreaterThanOrEqual(0);
    ns.ip("neigh", "del", "10.5.8.0", "dev", "flannel.1");
    expect(await within2s(all7and8)).toBeGreaterThanOrEqual(0);
    ns.bridge("fdb", "del", mac(7), "dev", "flannel.1", "dst", "192.168.77.17", "self");
    expect(await within2s(all7and8)).toBeGreaterThanOrEqual(0);
    ns.ip("addr", "del", "10.5.52.0/32", "dev", "flannel.1");
    expect(await within2s(async () => (await addrs()).join() === "10.5.52.0")).toBeGreaterThanOrEqual(0);
    expect(r.totals.fullRuns).toBe(1); // only the one this test ran
    expect(r.totals.eventRepairs).toBeGreaterThanOrEqual(4);
  });

  test("a peer's nexthop deleted by hand takes its route silently; both come back, without a full reconcile", async () => {
    const r = await vxlanUp();
    const id = await nhidOf("10.5.7.0/24");
    expect(id).toBeNumber();
    ns.ip("nexthop", "del", "id", String(id));
    expect(await within2s(all7and8)).toBeGreaterThanOrEqual(0);
    expect(await nhidOf("10.5.7.0/24")).toBe(id!); // the same id again
    expect(r.totals.fullRuns).toBe(1);
    expect(r.totals.eventRepairs).toBeGreaterThanOrEqual(1);
  });

  test("host-gw: a nexthop deleted by hand and a route deleted by hand come back", async () => {
    const r = await started([]);
    r.set("peer:1", hostgw(1));
    r.set("peer:2", hostgw(2));
    await r.flush();
    r.start();
    await Bun.sleep(200);
    const both = async () => (await routes()).join() === "10.5.1.0/24 ul0,10.5.2.0/24 ul0";
    ns.ip("nexthop", "del", "id", String(await nhidOf("10.5.1.0/24")));
    expect(await within2s(both)).toBeGreaterThanOrEqual(0);
    ns.ip("route", "del", "10.5.2.0/24");
    expect(await within2s(both)).toBeGreaterThanOrEqual(0);
    expect(r.totals.fullRuns).toBe(0);
  });

  test("plain gateway routes (nexthops turned off): a route deleted by hand comes back", async () => {
    const r = await vxlanUp(false);
    expect(await nhidOf("10.5.7.0/24")).toBeUndefined();
    ns.ip("route", "del", "10.5.7.0/24", "proto", String(ROUTE_PROTO));
    expect(await within2s(all7and8)).toBeGreaterThanOrEqual(0);
    expect(await nhidOf("10.5.7.0/24")).toBeUndefined();
    expect(r.totals.fullRuns).toBe(1);
  });

  test("the device deleted by hand comes back with its MAC, address and every peer entry", async () => {
    const r = await vxlanUp();
    ns.ip("link", "del", "flannel.1");
    expect(await within2s(all7and8)).toBeGreaterThanOrEqual(0);
    const l = ((await ipJson(["link", "show", "flannel.1"], ns.name)) as { address: string; flags: string[] }[])[0]!;
    expect(l.address).toBe(vxdev.mac);
    expect(l.flags).toContain("UP");
    expect(await within2s(async () => (await addrs()).join() === "10.5.52.0")).toBeGreaterThanOrEqual(0);
    ns.ip("link", "set", "flannel.1", "down");
    expect(
      await within2s(async () =>
        (((await ipJson(["link", "show", "flannel.1"], ns.name)) as { flags: string[] }[])[0]!.flags ?? []).includes("UP"),
      ),
    ).toBeGreaterThanOrEqual(0);
    expect(await within2s(all7and8)).toBeGreaterThanOrEqual(0);
    expect(r.totals.fullRuns).toBe(1);
  });

  test("host-gw: the underlay set down and up gets its routes back (the kernel drops them silently)", async () => {
    const r = await started([]);
    r.set("peer:1", hostgw(1));
    r.set("peer:2", hostgw(2));
    await r.flush();
    r.start();
    await Bun.sleep(200);
    ns.ip("link", "set", "ul0", "down");
    expect(await within2s(async () => (await routes()).length === 0)).toBeGreaterThanOrEqual(0);
    ns.ip("link", "set", "ul0", "up");
    expect(await within2s(async () => (await routes()).join() === "10.5.1.0/24 ul0,10.5.2.0/24 ul0")).toBeGreaterThanOrEqual(0);
    expect(r.totals.fullRuns).toBe(0);
  });

  test("idle: no process is started; a killed monitor is restarted (by PID) and followed by one full reconcile", async () => {
    const r = await vxlanUp();
    const pids = r.monitorPids();
    expect(pids).toHaveLength(2);
    const spawned = r.totals.processesSpawned;
    await Bun.sleep(1500);
    expect(r.totals.processesSpawned).toBe(spawned);
    process.kill(pids[0]!, "SIGKILL");
    expect(
      await within2s(async () => r.monitorPids().length === 2 && !r.monitorPids().includes(pids[0]!) && r.totals.fullRuns === 2),
    ).toBeGreaterThanOrEqual(0);
    // The restarted monitor repairs too.
    ns.ip("route", "del", "10.5.8.0/24", "proto", String(ROUTE_PROTO));
    expect(await within2s(all7and8)).toBeGreaterThanOrEqual(0);
    r.stop();
    expect(r.monitorPids()).toEqual([]);
    for (const p of pids.slice(1)) expect(await within2s(async () => !alive(p))).toBeGreaterThanOrEqual(0);
  });
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
