// host-gw end to end: 3 hosts on one L2 underlay, sqlite store, the compiled agent in each, containers behind cni0.
// One lab for the whole file; the tests run in order and build on each other.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type LabReport, labAddHost, labDown, labStartHost, labStopHost, labUp, pingAllPairs, pingFrom } from "../../src/lab/lab.ts";
import { ip } from "../../src/lab/netns.ts";
import { deleteLease, ensureBinary, host, iperf, labState, peerInfo, routes, waitUntil, testName } from "./helpers.ts";

// Explicit: these tests wait (bounded) for agents and kernels, longer than bun's default per-test timeout.
const TEST_TIMEOUT_MS = 90_000;
const LAB = { name: testName("e2hg") };
let report: LabReport;

const hasRoute = async (netns: string, subnet: string, via?: string) =>
  (await routes(netns)).some((r) => r.dst === subnet && (via === undefined || r.gateway === via));

beforeAll(async () => {
  const binary = await ensureBinary();
  await labDown(LAB); // leftovers of an interrupted earlier run (only what its lab.json recorded)
  report = await labUp({ ...LAB, hosts: 3, backend: "host-gw", store: "sqlite", binary });
}, 180_000);

afterAll(async () => {
  const r = await labDown(LAB);
  if (r.errors.length) console.error(r.errors);
}, 60_000);

describe("host-gw lab (sqlite)", () => {
  test(
    "every container pings every other container; routes go via the peer's underlay address",
    async () => {
      expect(report.pairs.filter((p) => !p.ok)).toEqual([]);
      expect(report.pairs).toHaveLength(6);
      for (const h of report.hosts) {
        expect(h.ready).toBe(true);
        expect(h.mtu).toBe(1500); // host-gw adds no overhead
      }
      const p2 = await peerInfo(host(LAB, 2));
      expect(await hasRoute(`${LAB.name}-h1`, p2.subnet, "192.0.2.12")).toBe(true);
      // No vxlan device in host-gw mode.
      expect((await ip(["link", "show", "flannel.1"], `${LAB.name}-h1`, { allowFail: true })).code).not.toBe(0);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "iperf3 TCP crosses from a container on one host to a container on another",
    async () => {
      const bps = await iperf(host(LAB, 1).containerNetns!, host(LAB, 2).containerNetns!, host(LAB, 2).containerIP!);
      expect(bps).toBeGreaterThan(1_000_000); // any real TCP flow; speed itself is not asserted in tests
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a route deleted by hand is put back (by the kernel monitor; test/e2e/repair.test.ts holds it to 2 s)",
    async () => {
      const h1 = host(LAB, 1);
      const peer = await peerInfo(host(LAB, 3));
      await ip(["route", "del", peer.subnet], h1.netns);
      await waitUntil(
        `${h1.netns} has its route to ${peer.subnet} again`,
        20_000,
        () => hasRoute(h1.netns, peer.subnet, peer.publicIP),
        500,
      );
      expect((await pingFrom(h1.containerNetns!, host(LAB, 3).containerIP!)).ok).toBe(true);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a 4th host joins and is reachable from all others without restarting anything",
    async () => {
      const pidsBefore = labState(LAB).hosts.map((h) => h.agentPid);
      await labAddHost(LAB);
      const pairs = await pingAllPairs(labState(LAB), { converge: true });
      expect(pairs.filter((p) => !p.ok)).toEqual([]);
      expect(pairs).toHaveLength(12);
      expect(
        labState(LAB)
          .hosts.slice(0, 3)
          .map((h) => h.agentPid),
      ).toEqual(pidsBefore);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a stopped host whose lease is deleted disappears from every other host's routes",
    async () => {
      const h4 = host(LAB, 4);
      const gone = await peerInfo(h4);
      const others = labState(LAB).hosts.filter((h) => h.index !== 4);
      for (const h of others) expect(await hasRoute(h.netns, gone.subnet, gone.publicIP)).toBe(true);
      await labStopHost(LAB, h4.netns);
      await deleteLease(LAB, gone);
      for (const h of others)
        await waitUntil(`${h.netns} forgets ${gone.subnet}`, 20_000, async () => !(await hasRoute(h.netns, gone.subnet)), 500);
      expect((await pingAllPairs(labState(LAB), { hosts: others })).filter((p) => !p.ok)).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "an agent restarted after a peer left while it was down removes the stale route at start",
    async () => {
      const h1 = host(LAB, 1);
      const h2 = host(LAB, 2);
      const left = await peerInfo(host(LAB, 3));
      await labStopHost(LAB, h1.netns);
      await labStopHost(LAB, `${LAB.name}-h3`);
      await deleteLease(LAB, left);
      await waitUntil(`${h2.netns} forgets ${left.subnet}`, 20_000, async () => !(await hasRoute(h2.netns, left.subnet)), 500);
      expect(await hasRoute(h1.netns, left.subnet, left.publicIP)).toBe(true); // left behind while h1 was down

      await labStartHost(LAB, h1.netns);
      await waitUntil(`restarted ${h1.netns} sweeps ${left.subnet}`, 15_000, async () => !(await hasRoute(h1.netns, left.subnet)), 500);
      const pairs = await pingAllPairs(labState(LAB), { hosts: [host(LAB, 1), host(LAB, 2)], converge: true });
      expect(pairs.filter((p) => !p.ok)).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );
});
