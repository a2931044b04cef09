// The lab on the network stores, for both backends: `lab up --store etcd|nats` starts its own server inside the
// underlay namespace and passes the same all-pairs container ping as SQLite (vxlan.test.ts, host-gw.test.ts).
// Plus `lab up --store etcd` with a server given through the usual store flags (storeArgs): the lab starts none.
// One 3-host lab per store x backend, each brought up and down inside its test (a few seconds each).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { type LabBackend, labDown, labStateDir, labStatus, labUp, readLabState } from "../../src/lab/lab.ts";
import { type EtcdServer, startEtcdServer } from "../harness/etcd-server.ts";
import { processAlive } from "../../src/lab/netns.ts";
import { peerBinary } from "../helpers/peers.ts";
import { ensureBinary, etcdctl, peerInfo, waitUntil, testName } from "./helpers.ts";

// Explicit: these tests wait (bounded) for agents and kernels, longer than bun's default per-test timeout.
const TEST_TIMEOUT_MS = 90_000;
const CURRENT_NATS = "nats-server v2.15.2";
const CASES = [
  { store: "etcd", backend: "vxlan", server: "Debian's etcd", lab: { name: testName("e2etvx") } },
  { store: "etcd", backend: "host-gw", server: "Debian's etcd", lab: { name: testName("e2ethg") } },
  { store: "nats", backend: "vxlan", server: "Debian's nats-server 2.9", lab: { name: testName("e2navx") } },
  { store: "nats", backend: "host-gw", server: "Debian's nats-server 2.9", lab: { name: testName("e2nahg") } },
  // The pinned current nats-server (built by scripts/setup.sh) as well as Debian's.
  { store: "nats", backend: "vxlan", server: CURRENT_NATS, lab: { name: testName("e2ncvx") } },
  { store: "nats", backend: "host-gw", server: CURRENT_NATS, lab: { name: testName("e2nchg") } },
] as const;
const serverOf = (c: (typeof CASES)[number]) => (c.server === CURRENT_NATS ? { natsServer: peerBinary("nats-server") } : {});
const GIVEN = { name: testName("e2given") };
const ALL_LABS = [...CASES.map((c) => c.lab), GIVEN];
let binary: string;

beforeAll(async () => {
  binary = await ensureBinary();
  for (const lab of ALL_LABS) await labDown(lab); // leftovers of an interrupted earlier run (only what lab.json recorded)
}, 300_000);

afterAll(async () => {
  for (const lab of ALL_LABS) {
    const r = await labDown(lab);
    if (r.errors.length) console.error(r.errors);
  }
}, 60_000);

describe.each(CASES)("lab on $store ($server), $backend", (c) => {
  const { store, backend, lab } = c;
  test(
    "3 hosts: every container pings every other; the server lives in the underlay and down stops it",
    async () => {
      const report = await labUp({ ...lab, hosts: 3, backend: backend as LabBackend, store, binary, ...serverOf(c) });
      expect(report.pairs.filter((p) => !p.ok)).toEqual([]);
      expect(report.pairs).toHaveLength(6);
      expect(report.store).toBe(store);
      expect(new Set(report.hosts.map((h) => h.subnet)).size).toBe(3);
      for (const h of report.hosts) {
        expect(h.ready).toBe(true);
        expect(h.subnet).toMatch(/^10\.5\.\d+\.1\/24$/);
        expect(h.mtu).toBe(backend === "vxlan" ? 1450 : 1500); // vxlan: 50 bytes of encapsulation
      }
      const s = readLabState(lab)!;
      expect(s.servers).toHaveLength(1);
      const srv = s.servers[0]!;
      expect(srv.kind).toBe(store);
      expect(srv.natsServer).toBe(serverOf(c).natsServer);
      expect(processAlive(srv.pid)).toBe(true);
      expect(s.storeFlags.slice(0, 2)).toEqual(["--store", store]);
      expect(s.storeFlags.join(" ")).toContain("192.0.2.1");
      // The data plane is the backend's: a vxlan device only in vxlan mode.
      const p2 = await peerInfo(s.hosts[1]!);
      expect(p2.vtepMac === null).toBe(backend === "host-gw");
      const st = await labStatus(lab);
      expect(st.ok).toBe(true);
      expect(st.hosts.every((h) => h.ready)).toBe(true);

      const down = await labDown(lab);
      expect(down.errors).toEqual([]);
      expect(processAlive(srv.pid)).toBe(false);
      for (const h of s.hosts) expect(h.agentPid === null || !processAlive(h.agentPid)).toBe(true);
    },
    TEST_TIMEOUT_MS,
  );
});

describe("lab on a given etcd (the usual store flags)", () => {
  test(
    "lab up uses the given server and prefix, starts none of its own, and all pairs ping",
    async () => {
      // The given server must be reachable from the lab's hosts, and the only network they share is the lab's own
      // underlay, which labUp creates. So the server is started inside that underlay (on br0's 192.0.2.1) as soon
      // as it exists, while labUp is still retrying its first `config put` (it waits up to 15 s for a server).
      const endpoint = "http://192.0.2.1:23790";
      const prefix = "/given/network";
      const ul = `${GIVEN.name}-ul`;
      let etcd: EtcdServer | null = null;
      const up = labUp({
        ...GIVEN,
        hosts: 3,
        backend: "vxlan",
        store: "etcd",
        binary,
        storeArgs: ["--etcd-endpoints", endpoint, "--etcd-prefix", prefix],
      });
      // Handled below; keeps an early rejection from being reported as unhandled while we start etcd.
      up.catch(() => {});
      try {
        await waitUntil(
          `${ul} has 192.0.2.1 on br0`,
          15_000,
          async () => {
            const r = Bun.spawnSync(["ip", "-n", ul, "-j", "-4", "addr", "show", "dev", "br0"], { stdout: "pipe", stderr: "ignore" });
            return r.exitCode === 0 && r.stdout.toString().includes('"192.0.2.1"');
          },
          50,
        );
        // Data dir in the lab's state dir: labDown removes it even if this process dies before etcd.stop().
        etcd = await startEtcdServer({
          netns: ul,
          host: "192.0.2.1",
          clientPort: 23790,
          peerPort: 23800,
          dataDir: join(labStateDir(GIVEN), "etcd-given"),
        });
        expect(etcd.endpoint).toBe(endpoint);

        const report = await up;
        expect(report.pairs.filter((p) => !p.ok)).toEqual([]);
        expect(report.pairs).toHaveLength(6);
        const s = readLabState(GIVEN)!;
        expect(s.servers).toEqual([]); // none of its own
        expect(s.storeFlags).toEqual(["--store", "etcd", "--etcd-endpoints", endpoint, "--etcd-prefix", prefix]);
        // Config and one lease per host live under the given prefix of the given server.
        const keys = (await etcdctl(ul, endpoint, ["get", "--prefix", prefix, "--keys-only"])).split("\n").filter((l) => l !== "");
        expect(keys.filter((k) => k.startsWith(`${prefix}/subnets/`))).toHaveLength(3);
        expect(keys).toContain(`${prefix}/config`);

        const down = await labDown(GIVEN);
        expect(down.errors).toEqual([]);
        expect(processAlive(etcd.pid)).toBe(true); // not the lab's to stop
      } finally {
        await etcd?.stop();
        await up.catch(() => {});
        await labDown(GIVEN);
      }
    },
    TEST_TIMEOUT_MS,
  );
});
