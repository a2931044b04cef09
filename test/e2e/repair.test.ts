// Event-driven repair end to end (issue 13.3/13.7): the compiled agent in lab hosts with a one-hour
// --reconcile-interval, so only its kernel monitor can put back what is removed by hand. Each repair is awaited for
// at most 2 s, and the agent's /metrics must still count just the one full reconcile it ran at start.
import { beforeAll, describe, expect, test } from "bun:test";
import { pingFrom } from "../../src/lab/lab.ts";
import { execIn, ip, run } from "../../src/lab/netns.ts";
import { host, knowsPeer, type PeerInfo, peerInfo, testName, twoHostLab, waitUntil } from "./helpers.ts";

const TEST_TIMEOUT_MS = 60_000;
const REPAIR_MS = 2_000;
const AGENT_ARGS = ["--reconcile-interval", "1h"];

async function metric(netns: string, name: string): Promise<number> {
  const r = await execIn(netns, ["curl", "-sf", "--max-time", "5", "http://127.0.0.1:8471/metrics"]);
  const line = r.stdout.split("\n").find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`${name} missing from /metrics in ${netns}`);
  return Number(line.split(" ")[1]);
}

/** The nexthop object the route to `dst` goes through (flannel-bin uses them where the kernel has them). */
async function nhidOf(netns: string, dst: string): Promise<number | undefined> {
  const rs = JSON.parse((await ip(["-j", "route", "show", dst], netns)).stdout || "[]") as { nhid?: number }[];
  return rs[0]?.nhid;
}

const knowsAll = async (netns: string, peer: PeerInfo) => {
  const k = await knowsPeer(netns, peer);
  return k.route && k.neigh && k.fdb;
};

describe("vxlan: the kernel monitor repairs what is removed by hand", () => {
  const LAB = { name: testName("e2rv") };
  let h1: ReturnType<typeof host>;
  let peer: PeerInfo;
  twoHostLab(LAB, "vxlan", AGENT_ARGS);
  beforeAll(async () => {
    h1 = host(LAB, 1);
    peer = await peerInfo(host(LAB, 2));
    expect(await metric(h1.netns, "flannel_bin_reconcile_runs_total")).toBe(1);
    expect(await metric(h1.netns, "flannel_bin_peers")).toBe(1); // the one other host, as /metrics and STATUS= count it
  }, 180_000);

  const backWithin2s = async (what: string) => {
    await waitUntil(`${h1.netns}: ${what} is back`, REPAIR_MS, () => knowsAll(h1.netns, peer), 50);
    expect(await metric(h1.netns, "flannel_bin_reconcile_runs_total")).toBe(1); // no full reconcile did it
  };

  test(
    "an idle agent starts no process (counted by the agent itself)",
    async () => {
      const before = await metric(h1.netns, "flannel_bin_kernel_processes_spawned_total");
      await Bun.sleep(3_000);
      expect(await metric(h1.netns, "flannel_bin_kernel_processes_spawned_total")).toBe(before);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a route deleted by hand",
    async () => {
      await ip(["route", "del", peer.subnet], h1.netns);
      await backWithin2s(`the route to ${peer.subnet}`);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "the route's nexthop deleted by hand (the kernel drops the route with it, without a route event)",
    async () => {
      const id = await nhidOf(h1.netns, peer.subnet);
      expect(id).toBeNumber();
      // The route may be back before it could be seen gone: the monitor's repair count says it was repaired.
      const repairs = await metric(h1.netns, "flannel_bin_kernel_event_repairs_total");
      await ip(["nexthop", "del", "id", String(id)], h1.netns);
      await backWithin2s(`the nexthop and route to ${peer.subnet}`);
      expect(await nhidOf(h1.netns, peer.subnet)).toBe(id!);
      expect(await metric(h1.netns, "flannel_bin_kernel_event_repairs_total")).toBeGreaterThan(repairs);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a neighbour entry deleted by hand",
    async () => {
      await ip(["neigh", "del", peer.subnetIP, "dev", "flannel.1"], h1.netns);
      await backWithin2s(`the neighbour ${peer.subnetIP}`);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "an fdb entry deleted by hand",
    async () => {
      await run(["bridge", "fdb", "del", peer.vtepMac!, "dev", "flannel.1", "dst", peer.publicIP, "self"], { netns: h1.netns });
      await backWithin2s(`the fdb entry for ${peer.vtepMac}`);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "the vxlan device deleted by hand: back with the same MAC, its address and every peer entry",
    async () => {
      const before = await peerInfo(h1);
      await ip(["link", "del", "flannel.1"], h1.netns);
      await backWithin2s("flannel.1 with its peers");
      expect((await peerInfo(h1)).vtepMac).toBe(before.vtepMac);
      const a = JSON.parse((await ip(["-j", "addr", "show", "flannel.1"], h1.netns)).stdout) as { addr_info: { local: string }[] }[];
      expect(a[0]!.addr_info.map((x) => x.local)).toContain(before.subnetIP);
      expect((await pingFrom(h1.containerNetns!, host(LAB, 2).containerIP!)).ok).toBe(true);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "the underlay link set down and up",
    async () => {
      await ip(["link", "set", "eth0", "down"], h1.netns);
      await Bun.sleep(300);
      await ip(["link", "set", "eth0", "up"], h1.netns);
      await backWithin2s("everything on flannel.1");
      await waitUntil(
        "a container ping across the underlay",
        REPAIR_MS * 5,
        async () => (await pingFrom(h1.containerNetns!, host(LAB, 2).containerIP!)).ok,
        200,
      );
      expect(await metric(h1.netns, "flannel_bin_kernel_event_repairs_total")).toBeGreaterThanOrEqual(4);
    },
    TEST_TIMEOUT_MS,
  );
});

describe("host-gw: the kernel monitor repairs what is removed by hand", () => {
  const LAB = { name: testName("e2rh") };
  let h1: ReturnType<typeof host>;
  let peer: PeerInfo;
  const hasRoute = async () =>
    (JSON.parse((await ip(["-j", "route", "show", peer.subnet], h1.netns)).stdout || "[]") as { gateway?: string }[]).some(
      (r) => r.gateway === peer.publicIP,
    );
  twoHostLab(LAB, "host-gw", AGENT_ARGS);
  beforeAll(async () => {
    h1 = host(LAB, 1);
    peer = await peerInfo(host(LAB, 2));
  }, 180_000);

  test(
    "a route deleted by hand, its nexthop deleted by hand, then the underlay set down (the kernel drops its routes silently) and up",
    async () => {
      await ip(["route", "del", peer.subnet], h1.netns);
      await waitUntil("the route is back", REPAIR_MS, hasRoute, 50);
      const id = await nhidOf(h1.netns, peer.subnet);
      expect(id).toBeNumber();
      const repairs = await metric(h1.netns, "flannel_bin_kernel_event_repairs_total");
      await ip(["nexthop", "del", "id", String(id)], h1.netns);
      await waitUntil("the route is back after its nexthop was deleted", REPAIR_MS, hasRoute, 50);
      expect(await metric(h1.netns, "flannel_bin_kernel_event_repairs_total")).toBeGreaterThan(repairs);
      await ip(["link", "set", "eth0", "down"], h1.netns);
      expect(await hasRoute()).toBe(false);
      await ip(["link", "set", "eth0", "up"], h1.netns);
      await waitUntil("the route is back after the link came up", REPAIR_MS, hasRoute, 50);
      expect(await metric(h1.netns, "flannel_bin_reconcile_runs_total")).toBe(1);
      await waitUntil(
        "a container ping",
        REPAIR_MS * 5,
        async () => (await pingFrom(h1.containerNetns!, host(LAB, 2).containerIP!)).ok,
        200,
      );
    },
    TEST_TIMEOUT_MS,
  );
});
