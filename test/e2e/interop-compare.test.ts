// flannel-bin beside flanneld v0.28.9 on the same inputs: one mixed vxlan lab (hosts 1-2 flanneld, 3-4 flannel-bin, all
// with --ip-masq, one etcd). Host 1 (flanneld) and host 3 (flannel-bin) see the same peers (2 and 4), so what each made
// of the same leases can be compared side by side; then the same faults hit both. These tests back the README's
// comparison table, one test per row; they run in order on one lab.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { labDown, labStartHost, labStartStore, labStopHost, labStopStore } from "../../src/lab/lab.ts";
import { ip, processAlive, run } from "../../src/lab/netns.ts";
import { fdb, host, knowsPeer, labState, neighs, peerInfo, routes, testName, waitUntil } from "./helpers.ts";
import { etcdDelete, leaseKey, lost, pingWhile, upMixedVxlanLab } from "./interop.ts";

const LAB = { name: testName("e2cmp") };
const FLANNELD = 1;
const OURS = 3;
const TEST_TIMEOUT_MS = 90_000;

beforeAll(() => upMixedVxlanLab(LAB, { flanneldArgs: ["-ip-masq"], agentArgs: ["--ip-masq"] }), 120_000);
afterAll(async () => {
  await labDown(LAB);
}, 60_000);

interface JLink {
  mtu?: number;
  address?: string;
  txqlen?: number;
  linkinfo?: { info_kind?: string; info_data?: Record<string, unknown> };
}

/** flannel.1 as `ip -d -j link show` reports it, the host-specific parts named. */
async function device(i: number) {
  const h = host(LAB, i);
  const l = (JSON.parse((await ip(["-d", "-j", "link", "show", "flannel.1"], h.netns)).stdout) as JLink[])[0]!;
  const d = l.linkinfo?.info_data ?? {};
  const addrs = JSON.parse((await ip(["-j", "-4", "addr", "show", "flannel.1"], h.netns)).stdout) as {
    addr_info: { local: string; prefixlen: number }[];
  }[];
  const own = await peerInfo(h);
  return {
    kind: l.linkinfo?.info_kind,
    vni: d.id,
    localIsPublicIP: d.local === h.publicIP,
    underlay: d.link,
    port: d.port,
    learning: d.learning,
    udpCsum: d.udp_csum,
    mtu: l.mtu,
    addresses: addrs[0]?.addr_info.map((a) => `${a.local === own.subnetIP ? "<subnet>" : a.local}/${a.prefixlen}`),
  };
}

/** Host i's entries for the peers both compared hosts share (2 and 4), in one host-independent form. */
async function peerEntries(i: number) {
  const h = host(LAB, i);
  const peers = await Promise.all([2, 4].map((p) => peerInfo(host(LAB, p))));
  const rs = await routes(h.netns);
  const ns = await neighs(h.netns);
  const fs = await fdb(h.netns);
  return peers.map((p) => ({
    // The meaning (dst, gateway, device, onlink), not the nhid: flannel-bin's route goes through a nexthop object.
    route: rs
      .filter((r) => r.dst === p.subnet)
      .map((r) => ({ dst: r.dst, gateway: r.gateway, dev: r.dev, onlink: r.flags?.includes("onlink") ?? false })),
    neigh: ns.filter((n) => n.dst === p.subnetIP).map((n) => ({ dst: n.dst, lladdr: n.lladdr, state: n.state })),
    fdb: fs.filter((f) => f.mac === p.vtepMac).map((f) => ({ mac: f.mac, dst: f.dst, flags: f.flags })),
  }));
}

/** iptables-save of a host, counters and comments about the tool dropped, its own subnet written as <P>. */
async function rules(i: number) {
  const h = host(LAB, i);
  const own = await peerInfo(h);
  const out = (await run(["iptables-save"], { netns: h.netns })).stdout;
  return out
    .split("\n")
    .filter((l) => l !== "" && !l.startsWith("#"))
    .map((l) => l.replace(/\[\d+:\d+\]/g, "").replaceAll(own.subnet, "<P>"));
}

const subnetEnvShape = (i: number) =>
  readFileSync(host(LAB, i).subnetFile, "utf8").replace(/FLANNEL_SUBNET=10\.5\.\d+\.1\/24/, "FLANNEL_SUBNET=<P .1>/24");

describe("flannel-bin and flanneld on the same inputs (vxlan, --ip-masq)", () => {
  test("same kernel state for the same leases: device, MTU, address, routes, neighbours, fdb entries", async () => {
    const [theirs, ours] = [await device(FLANNELD), await device(OURS)];
    expect(ours).toEqual(theirs);
    expect(ours).toMatchObject({ kind: "vxlan", vni: 1, localIsPublicIP: true, underlay: "eth0", port: 8472, learning: false, mtu: 1450 });
    expect(ours.addresses).toEqual(["<subnet>/32"]);
    const [theirPeers, ourPeers] = [await peerEntries(FLANNELD), await peerEntries(OURS)];
    expect(ourPeers).toEqual(theirPeers);
    for (const p of ourPeers) for (const kind of [p.route, p.neigh, p.fdb]) expect(kind.length).toBe(1);
  });

  test("same iptables rules with --ip-masq (FLANNEL-POSTRTG in nat, FLANNEL-FWD in filter)", async () => {
    const [theirs, ours] = [await rules(FLANNELD), await rules(OURS)];
    expect(ours).toEqual(theirs);
    expect(ours).toContain(
      '-A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
    );
  });

  test("same subnet.env", () => {
    expect(subnetEnvShape(OURS)).toBe(subnetEnvShape(FLANNELD));
    expect(subnetEnvShape(OURS)).toBe("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=<P .1>/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n");
  });

  test(
    "better: a peer that left while the agent was down is removed at start by flannel-bin; flanneld keeps its stale entries",
    async () => {
      const s = labState(LAB);
      const leaving = await peerInfo(host(LAB, 4));
      await labStopHost(LAB, host(LAB, FLANNELD).netns);
      await labStopHost(LAB, host(LAB, OURS).netns);
      await labStopHost(LAB, host(LAB, 4).netns);
      await etcdDelete(s, leaseKey(s, leaving.subnet));
      await labStartHost(LAB, host(LAB, FLANNELD).netns);
      await labStartHost(LAB, host(LAB, OURS).netns);
      // Ready means flannel-bin's first full sync is done; flanneld has had its snapshot too.
      await waitUntil("flannel-bin removed the stale peer", 15_000, async () => {
        const k = await knowsPeer(host(LAB, OURS).netns, leaving);
        return !k.route && !k.neigh && !k.fdb;
      });
      expect(await knowsPeer(host(LAB, FLANNELD).netns, leaving)).toEqual({ route: true, neigh: true, fdb: true });
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "better: a route deleted by hand is put back by flannel-bin within seconds; flanneld (vxlan) never puts it back",
    async () => {
      const peer = await peerInfo(host(LAB, 2));
      for (const i of [FLANNELD, OURS]) await ip(["route", "del", peer.subnet], host(LAB, i).netns);
      await waitUntil("flannel-bin restored the route", 15_000, async () => (await knowsPeer(host(LAB, OURS).netns, peer)).route);
      await Bun.sleep(12_000); // longer than any flanneld timer that could matter (host-gw's check is 10 s)
      expect((await knowsPeer(host(LAB, FLANNELD).netns, peer)).route).toBe(false);
      await ip(["route", "replace", peer.subnet, "via", peer.subnetIP, "dev", "flannel.1", "onlink"], host(LAB, FLANNELD).netns);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "better: a deleted flannel.1 comes back with its MAC and every peer entry from flannel-bin; flanneld's comes back bare, with a new MAC",
    async () => {
      const peer = await peerInfo(host(LAB, 2));
      const macBefore = { theirs: (await peerInfo(host(LAB, FLANNELD))).vtepMac, ours: (await peerInfo(host(LAB, OURS))).vtepMac };
      for (const i of [FLANNELD, OURS]) await ip(["link", "del", "flannel.1"], host(LAB, i).netns);
      await waitUntil("flannel-bin rebuilt flannel.1 and the peer entries", 20_000, async () => {
        const k = await knowsPeer(host(LAB, OURS).netns, peer);
        return k.route && k.neigh && k.fdb;
      });
      expect((await peerInfo(host(LAB, OURS))).vtepMac).toBe(macBefore.ours);
      const c = host(LAB, OURS);
      const r = await run(["ping", "-c", "2", "-W", "1", host(LAB, 2).containerIP!], { netns: c.containerNetns!, allowFail: true });
      expect(r.code).toBe(0);
      // flanneld (compat notes §5): device and address recreated after a backoff, peers not re-programmed, MAC new.
      await waitUntil("flanneld recreated flannel.1", 20_000, async () => (await peerInfo(host(LAB, FLANNELD))).vtepMac !== null);
      await Bun.sleep(5000);
      expect((await peerInfo(host(LAB, FLANNELD))).vtepMac).not.toBe(macBefore.theirs);
      expect(await knowsPeer(host(LAB, FLANNELD).netns, peer)).toEqual({ route: false, neigh: false, fdb: false });
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "same: during a store outage both keep forwarding (0 lost); afterwards both follow a new lease",
    async () => {
      const a = host(LAB, 2); // flanneld, untouched so far
      const b = host(LAB, OURS);
      const tallies = await pingWhile(
        a,
        [b],
        async () => {
          await labStopStore(LAB);
          await Bun.sleep(8000);
          await labStartStore(LAB);
        },
        { count: 1500 },
      );
      expect(tallies.map(lost)).toEqual([0]);
      expect(processAlive(a.agentPid!) && processAlive(b.agentPid!)).toBe(true);
      // A host joins after the outage: both watches resumed.
      await labStartHost(LAB, host(LAB, 4).netns);
      const joined = await peerInfo(host(LAB, 4));
      for (const h of [a, b])
        await waitUntil(`${h.netns} learned the new lease`, 30_000, async () => {
          const k = await knowsPeer(h.netns, joined);
          return k.route && k.neigh && k.fdb;
        });
    },
    TEST_TIMEOUT_MS,
  );
});
