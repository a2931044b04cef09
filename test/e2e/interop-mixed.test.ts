// Mixed clusters: 2 real flanneld hosts (v0.28.9, built by scripts/setup.sh) and 2 flannel-bin hosts on one etcd with a
// custom -etcd-prefix, for vxlan and host-gw. Each reads the other's leases and programs them; the leases in etcd are
// flannel's; renewals from both sides; a lease deleted by hand leaves every kernel. One lab per backend, shared by the
// tests of its describe block (they run in order).
//
// flanneld renews 24 h leases `-subnet-lease-renew-margin` minutes before expiry: 1439 makes that one minute after each
// grant, the shortest flanneld allows. flannel-bin hosts use a 20 s TTL (renewal at half-life).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { type LabReport, labDown, labStopHost, labUp, readSubnetEnv } from "../../src/lab/lab.ts";
import { processAlive, run } from "../../src/lab/netns.ts";
import { peerBinary } from "../helpers/peers.ts";
import { ensureBinary, host, knowsPeer, labState, peerInfo, routes, testName, waitUntil } from "./helpers.ts";
import { etcdDelete, etcdGetPrefix, etcdLeases, leaseKey } from "./interop.ts";

const PREFIX = "/interop/network";
const FLANNELD_HOSTS = [1, 2];
const MIXED = (backend: "vxlan" | "host-gw") => ({
  hosts: 4,
  backend,
  store: "etcd" as const,
  etcdPrefix: PREFIX,
  flanneld: { binary: peerBinary("flannel"), hosts: FLANNELD_HOSTS, args: ["-subnet-lease-renew-margin", "1439"] },
  agentArgs: ["--subnet-lease-ttl", "20s"],
});
const kind = (i: number) => (FLANNELD_HOSTS.includes(i) ? "flanneld" : "flannel-bin");

describe("mixed cluster, vxlan: 2 flanneld + 2 flannel-bin hosts on one etcd (custom prefix)", () => {
  const LAB = { name: testName("e2mxv") };
  let report: LabReport;
  beforeAll(async () => {
    await labDown(LAB);
    report = await labUp({ ...LAB, ...MIXED("vxlan"), binary: await ensureBinary() });
  }, 120_000);
  afterAll(async () => {
    await labDown(LAB);
  }, 60_000);

  test("every container pings every other one, and each host holds route, neighbour and fdb entry for each peer", async () => {
    expect(report.pairs.filter((p) => !p.ok)).toEqual([]);
    expect(report.pairs.length).toBe(12);
    const hosts = labState(LAB).hosts;
    expect(hosts.map((h) => h.agent ?? "flannel-bin")).toEqual(["flanneld", "flanneld", "flannel-bin", "flannel-bin"]);
    for (const h of hosts)
      for (const peer of hosts)
        if (peer !== h)
          expect({ on: h.netns, peer: peer.netns, ...(await knowsPeer(h.netns, await peerInfo(peer))) }).toEqual({
            on: h.netns,
            peer: peer.netns,
            route: true,
            neigh: true,
            fdb: true,
          });
  });

  test("etcdctl get --prefix shows one lease per host in flannel's format, its VtepMAC the host's flannel.1 MAC", async () => {
    const s = labState(LAB);
    const text = await etcdGetPrefix(s);
    const lines = text.trim().split("\n");
    expect(lines.length).toBe(8); // key, value for each of the 4 hosts
    const leases = await etcdLeases(s);
    expect(leases.length).toBe(4);
    for (const h of s.hosts) {
      const info = await peerInfo(h);
      const key = leaseKey(s, info.subnet);
      const l = leases.find((x) => x.key === key);
      // Byte for byte what flanneld writes: field order, null PublicIPv6, VNI before VtepMAC.
      expect({ host: h.netns, agent: kind(h.index), value: l?.value }).toEqual({
        host: h.netns,
        agent: kind(h.index),
        value: `{"PublicIP":"${h.publicIP}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"${info.vtepMac}"}}`,
      });
      expect(l!.lease).not.toBe("0"); // on an etcd lease, so it expires if not renewed
    }
  });

  test("renewals from both sides: every lease key is rewritten under a fresh etcd lease (flanneld after 1 min, flannel-bin every 10 s)", async () => {
    const s = labState(LAB);
    const before = new Map((await etcdLeases(s)).map((l) => [l.key, l]));
    const renewed = new Set<string>();
    await waitUntil(
      "every host's lease key was renewed",
      110_000,
      async () => {
        for (const l of await etcdLeases(s)) {
          const b = before.get(l.key);
          if (b && l.modRevision > b.modRevision && l.lease !== b.lease && l.value === b.value) renewed.add(l.key);
        }
        return renewed.size === before.size;
      },
      2000,
    );
    // Nobody lost track of anybody meanwhile.
    for (const h of s.hosts) expect(readSubnetEnv(h)).not.toBeNull();
  }, 150_000);

  test("a lease deleted by hand, its flannel-bin host stopped, disappears from the other three kernels (flanneld's too)", async () => {
    const s = labState(LAB);
    const gone = host(LAB, 4);
    const info = await peerInfo(gone);
    await labStopHost(LAB, gone.netns);
    await etcdDelete(s, leaseKey(s, info.subnet));
    for (const i of [1, 2, 3])
      await waitUntil(`${host(LAB, i).netns} forgot ${info.subnet}`, 20_000, async () => {
        const k = await knowsPeer(host(LAB, i).netns, info);
        return !k.route && !k.neigh && !k.fdb;
      });
  });

  test("flanneld whose own lease is deleted by hand shuts down (its behaviour: 'Lease has been revoked'); the others forget it", async () => {
    const s = labState(LAB);
    const victim = host(LAB, 2);
    const info = await peerInfo(victim);
    await etcdDelete(s, leaseKey(s, info.subnet));
    await waitUntil(`flanneld in ${victim.netns} to exit`, 20_000, async () => !processAlive(victim.agentPid!));
    expect(readFileSync(victim.logFile, "utf8")).toContain("Lease has been revoked. Shutting down daemon.");
    for (const i of [1, 3])
      await waitUntil(`${host(LAB, i).netns} forgot ${info.subnet}`, 20_000, async () => {
        const k = await knowsPeer(host(LAB, i).netns, info);
        return !k.route && !k.neigh && !k.fdb;
      });
    // flanneld left its kernel state in place on the way out.
    expect((await routes(victim.netns)).filter((r) => r.dev === "flannel.1").length).toBeGreaterThan(0);
  });

  test("better: flannel-bin whose own lease is deleted by hand re-creates it on the same subnet; flanneld programs it again", async () => {
    const s = labState(LAB);
    const ours = host(LAB, 3);
    const info = await peerInfo(ours);
    const key = leaseKey(s, info.subnet);
    const before = (await etcdLeases(s)).find((l) => l.key === key)!;
    await etcdDelete(s, key);
    await waitUntil(`${ours.netns} re-created ${key}`, 20_000, async () => {
      const l = (await etcdLeases(s)).find((x) => x.key === key);
      return l !== undefined && l.modRevision > before.modRevision;
    });
    expect((await etcdLeases(s)).find((l) => l.key === key)?.value).toBe(before.value);
    expect(processAlive(ours.agentPid!)).toBe(true);
    const flanneld = host(LAB, 1);
    await waitUntil(`flanneld in ${flanneld.netns} programs ${info.subnet} again`, 20_000, async () => {
      const k = await knowsPeer(flanneld.netns, info);
      return k.route && k.neigh && k.fdb;
    });
    const r = await run(["ping", "-c", "2", "-W", "1", ours.containerIP!], { netns: flanneld.containerNetns!, allowFail: true });
    expect(r.code).toBe(0);
  });
});

describe("mixed cluster, host-gw: 2 flanneld + 2 flannel-bin hosts on one etcd (custom prefix)", () => {
  const LAB = { name: testName("e2mxh") };
  let report: LabReport;
  beforeAll(async () => {
    await labDown(LAB);
    report = await labUp({ ...LAB, ...MIXED("host-gw"), binary: await ensureBinary() });
  }, 120_000);
  afterAll(async () => {
    await labDown(LAB);
  }, 60_000);

  test("every container pings every other one; each host routes each peer subnet via the peer's underlay address", async () => {
    expect(report.pairs.filter((p) => !p.ok)).toEqual([]);
    expect(report.pairs.length).toBe(12);
    const hosts = labState(LAB).hosts;
    for (const h of hosts) {
      const rs = await routes(h.netns);
      for (const peer of hosts) {
        if (peer === h) continue;
        const { subnet } = await peerInfo(peer);
        expect({ on: h.netns, route: rs.find((r) => r.dst === subnet) }).toMatchObject({
          on: h.netns,
          route: { gateway: peer.publicIP, dev: "eth0" },
        });
      }
    }
  });

  test("one host-gw lease per host in flannel's format", async () => {
    const s = labState(LAB);
    const leases = await etcdLeases(s);
    expect(leases.length).toBe(4);
    for (const h of s.hosts) {
      const key = leaseKey(s, (await peerInfo(h)).subnet);
      const l = leases.find((x) => x.key === key);
      expect({ agent: kind(h.index), value: l?.value }).toEqual({
        agent: kind(h.index),
        value: `{"PublicIP":"${h.publicIP}","PublicIPv6":null,"BackendType":"host-gw"}`,
      });
    }
  });
});
