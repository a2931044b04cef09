// vxlan end to end: 3 hosts (network namespaces) on sqlite, the compiled agent in each, containers behind cni0.
// One lab for the whole file; the tests run in order and build on each other (4th host joins, then leaves, ...).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  type LabReport,
  labAddHost,
  labDown,
  labStartHost,
  labStopHost,
  labUp,
  pingAllPairs,
  pingFrom,
  readSubnetEnv,
} from "../../src/lab/lab.ts";
import { ip } from "../../src/lab/netns.ts";
import { deleteLease, ensureBinary, host, iperf, knowsPeer, labState, peerInfo, routes, waitUntil, testName } from "./helpers.ts";

// Explicit: these tests wait (bounded) for agents and kernels, longer than bun's default per-test timeout.
const TEST_TIMEOUT_MS = 90_000;
const LAB = { name: testName("e2vx") };
let report: LabReport;

beforeAll(async () => {
  const binary = await ensureBinary();
  await labDown(LAB); // leftovers of an interrupted earlier run (only what its lab.json recorded)
  report = await labUp({ ...LAB, hosts: 3, backend: "vxlan", store: "sqlite", binary });
}, 180_000);

afterAll(async () => {
  const r = await labDown(LAB);
  if (r.errors.length) console.error(r.errors);
}, 60_000);

describe("vxlan lab (sqlite)", () => {
  test(
    "every container pings every other container",
    async () => {
      expect(report.pairs.filter((p) => !p.ok)).toEqual([]);
      expect(report.pairs).toHaveLength(6);
      const subnets = report.hosts.map((h) => h.subnet);
      expect(new Set(subnets).size).toBe(3);
      for (const h of report.hosts) {
        expect(h.ready).toBe(true);
        expect(h.mtu).toBe(1450);
        expect(h.subnet).toMatch(/^10\.5\.\d+\.1\/24$/);
      }
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
    "path MTU: FLANNEL_MTU-28 bytes of ICMP payload pass unfragmented, one byte more does not",
    async () => {
      const h1 = host(LAB, 1);
      const h2 = host(LAB, 2);
      const mtu = readSubnetEnv(h1)!.mtu;
      const fits = await pingFrom(h1.containerNetns!, h2.containerIP!, { size: mtu - 28, dontFragment: true, count: 2 });
      expect(fits.ok).toBe(true);
      const tooBig = await pingFrom(h1.containerNetns!, h2.containerIP!, { size: mtu - 27, dontFragment: true, count: 1 });
      expect(tooBig.ok).toBe(false);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a route deleted by hand is put back (by the kernel monitor; test/e2e/repair.test.ts holds it to 2 s)",
    async () => {
      const h1 = host(LAB, 1);
      const peer = await peerInfo(host(LAB, 2));
      await ip(["route", "del", peer.subnet], h1.netns);
      await waitUntil(
        `${h1.netns} has its route to ${peer.subnet} again`,
        20_000,
        async () => (await knowsPeer(h1.netns, peer)).route,
        500,
      );
      const ok = await pingFrom(h1.containerNetns!, host(LAB, 2).containerIP!);
      expect(ok.ok).toBe(true);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a vxlan device deleted by hand comes back with the same MAC, its peers and working pings (flanneld re-adds only the device)",
    async () => {
      const h1 = host(LAB, 1);
      const macOf = async () => {
        const r = await ip(["-json", "link", "show", "flannel.1"], h1.netns, { allowFail: true });
        return r.code === 0 ? (JSON.parse(r.stdout)[0]?.address as string | undefined) : undefined;
      };
      const mac = await macOf();
      expect(mac).toMatch(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
      await ip(["link", "del", "flannel.1"], h1.netns);
      await waitUntil(`${h1.netns} has flannel.1 again`, 20_000, async () => (await macOf()) !== undefined, 500);
      expect(await macOf()).toBe(mac);
      const peer = await peerInfo(host(LAB, 2));
      await waitUntil(
        `${h1.netns} knows ${peer.subnet} again`,
        20_000,
        async () => {
          const k = await knowsPeer(h1.netns, peer);
          return k.route && k.neigh && k.fdb;
        },
        500,
      );
      const ok = await pingFrom(h1.containerNetns!, host(LAB, 2).containerIP!);
      expect(ok.ok).toBe(true);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a 4th host joins and is reachable from all others without restarting anything",
    async () => {
      const pidsBefore = labState(LAB).hosts.map((h) => h.agentPid);
      const h4 = await labAddHost(LAB);
      expect(h4.netns).toBe(`${LAB.name}-h4`);
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
    "a stopped host whose lease is deleted disappears from every other host's routes, neighbours and fdb",
    async () => {
      const h4 = host(LAB, 4);
      const gone = await peerInfo(h4);
      expect(gone.vtepMac).not.toBeNull();
      const others = labState(LAB).hosts.filter((h) => h.index !== 4);
      for (const h of others) expect(await knowsPeer(h.netns, gone)).toEqual({ route: true, neigh: true, fdb: true });

      await labStopHost(LAB, h4.netns);
      await deleteLease(LAB, gone);
      for (const h of others) {
        await waitUntil(
          `${h.netns} forgets ${gone.subnet}`,
          20_000,
          async () => {
            const k = await knowsPeer(h.netns, gone);
            return !k.route && !k.neigh && !k.fdb;
          },
          500,
        );
      }
      const pairs = await pingAllPairs(labState(LAB), { hosts: others });
      expect(pairs.filter((p) => !p.ok)).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "an agent restarted after a peer left while it was down removes the peer's stale entries at start",
    async () => {
      const h1 = host(LAB, 1);
      const h2 = host(LAB, 2);
      const left = await peerInfo(host(LAB, 3));
      await labStopHost(LAB, h1.netns);
      await labStopHost(LAB, `${LAB.name}-h3`);
      await deleteLease(LAB, left);
      // h2 is running: it drops h3 via the watch. h1 is down: nothing removes its entries (flannel leaves state on exit).
      await waitUntil(`${h2.netns} forgets ${left.subnet}`, 20_000, async () => !(await knowsPeer(h2.netns, left)).route, 500);
      expect(await knowsPeer(h1.netns, left)).toEqual({ route: true, neigh: true, fdb: true });

      await labStartHost(LAB, h1.netns);
      await waitUntil(
        `restarted ${h1.netns} sweeps ${left.subnet}`,
        15_000,
        async () => {
          const k = await knowsPeer(h1.netns, left);
          return !k.route && !k.neigh && !k.fdb;
        },
        500,
      );
      // ...and still reaches the peer that stayed.
      const pairs = await pingAllPairs(labState(LAB), { hosts: [host(LAB, 1), host(LAB, 2)], converge: true });
      expect(pairs.filter((p) => !p.ok)).toEqual([]);
      expect((await routes(h1.netns)).some((r) => r.dst === left.subnet)).toBe(false);
    },
    TEST_TIMEOUT_MS,
  );
});
