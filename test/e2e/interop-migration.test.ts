// Live migration, host by host: a flanneld host replaced in place by flannel-bin (stop flanneld, start flannel-bin with
// the same --subnet-file, interface and store) while its container pings a container on every other host, and back.
// flannel-bin adopts flanneld's flannel.1 (and its MAC), routes, neighbours and fdb entries: 0 packets lost. The way
// back costs at most what a flanneld restart costs (measured in the same lab). One lab (vxlan, 2 flanneld + 2
// flannel-bin hosts on one etcd) shared by the tests, which run in order. flannel-bin reconciles every 2 s here, so a
// full comparison of kernel and desired state happens while the pings run.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type LabHost, labDown, labSwitchAgent } from "../../src/lab/lab.ts";
import { host, labState, peerInfo, testName } from "./helpers.ts";
import { etcdLeases, leaseKey, lost, pingWhile, upMixedVxlanLab } from "./interop.ts";

const LAB = { name: testName("e2mig") };
const TEST_TIMEOUT_MS = 120_000;

beforeAll(() => upMixedVxlanLab(LAB, { etcdPrefix: "/interop/network", agentArgs: ["--reconcile-interval", "2s"] }), 120_000);
afterAll(async () => {
  await labDown(LAB);
}, 60_000);

const others = (h: LabHost) => labState(LAB).hosts.filter((x) => x.index !== h.index);

/** What must not change on a host across a migration: its subnet, lease value, VTEP MAC and container address. */
async function identity(h: LabHost) {
  const s = labState(LAB);
  const info = await peerInfo(h);
  const lease = (await etcdLeases(s)).find((l) => l.key === leaseKey(s, info.subnet));
  return { subnet: info.subnet, mac: info.vtepMac, lease: lease?.value ?? null, container: h.containerIP };
}

/** Switches host `i` to `agent` while its container pings every other container; returns the tallies. */
async function migrate(i: number, agent: "flannel-bin" | "flanneld") {
  const h = host(LAB, i);
  const before = await identity(h);
  let switchMs = 0;
  const tallies = await pingWhile(h, others(h), async () => {
    const t0 = Date.now();
    await labSwitchAgent(LAB, h.netns, agent);
    switchMs = Date.now() - t0;
  });
  console.log(
    `host ${i} ${before.mac} -> ${agent}: ready ${switchMs} ms after SIGTERM; lost ${tallies.map((t) => `${lost(t)}/${t.transmitted}`).join(", ")}`,
  );
  const after = await identity(host(LAB, i));
  expect(after).toEqual(before);
  expect(host(LAB, i).agent).toBe(agent);
  for (const t of tallies) expect(t.transmitted).toBeGreaterThan(0);
  return tallies;
}

describe("live migration between flanneld and flannel-bin, one host at a time (vxlan)", () => {
  test(
    "flanneld -> flannel-bin in place: same subnet, lease, MAC and container address; 0 packets lost to every other host",
    async () => {
      const tallies = await migrate(1, "flannel-bin");
      expect(tallies.map((t) => ({ to: t.to, lost: lost(t) }))).toEqual(tallies.map((t) => ({ to: t.to, lost: 0 })));
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "flannel-bin -> flanneld (the way back) loses no more than a flanneld restart does",
    async () => {
      // What flanneld itself costs: a restart of flanneld on host 2.
      const baseline = await migrate(2, "flanneld");
      const back = await migrate(1, "flanneld");
      const most = Math.max(...baseline.map(lost));
      expect(back.map((t) => ({ to: t.to, lostAtMostBaseline: lost(t) <= most }))).toEqual(
        back.map((t) => ({ to: t.to, lostAtMostBaseline: true })),
      );
      console.log(`flanneld restart lost ${baseline.map(lost).join("/")}; flannel-bin -> flanneld lost ${back.map(lost).join("/")}`);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a host that started as flannel-bin moves to flanneld and back (flanneld keeps the derived MAC): 0 packets lost",
    async () => {
      const there = await migrate(3, "flanneld");
      const back = await migrate(3, "flannel-bin");
      expect([...there, ...back].map(lost)).toEqual([...there, ...back].map(() => 0));
    },
    TEST_TIMEOUT_MS,
  );
});
