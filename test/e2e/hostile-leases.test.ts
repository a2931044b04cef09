// Issue 12 end to end on etcd: with a whole-Network lease, a lease reusing a live host's VtepMAC and a /25 inside a
// live host's /24 written straight into etcd, a new host still joins, no host programs any of them, and every
// container pair pings.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { labAddHost, labDown, labUp, pingAllPairs, readLabState } from "../../src/lab/lab.ts";
import { ensureBinary, etcdctl, fdb, labState, peerInfo, routes, testName } from "./helpers.ts";

const LAB = { name: testName("e2eh") };
const UL = `${LAB.name}-ul`;
const PREFIX = "/coreos.com/network";

let binary: string;
beforeAll(async () => {
  binary = await ensureBinary();
  await labDown(LAB);
}, 120_000);
afterAll(async () => {
  const r = await labDown(LAB);
  if (r.errors.length) console.error(r.errors);
}, 60_000);

test("whole-Network lease, duplicate VtepMAC and overlapping /25 present: a new host joins and every pair pings", async () => {
  const up = await labUp({ ...LAB, hosts: 2, store: "etcd", binary });
  expect(up.pairs.filter((p) => !p.ok)).toEqual([]);
  const s = readLabState(LAB)!;
  const flags = s.storeFlags;
  const endpoint = flags[flags.indexOf("--etcd-endpoints") + 1]!;
  const h1 = await peerInfo(s.hosts[0]!);
  const h2 = await peerInfo(s.hosts[1]!);
  expect(h1.vtepMac).not.toBeNull();
  const taken = new Set([h1.subnet, h2.subnet]);
  const free = [...Array(250).keys()].map((i) => `10.5.${i + 1}.0/24`).find((n) => !taken.has(n))!;
  const value = (ip: string, mac: string) =>
    JSON.stringify({ PublicIP: ip, PublicIPv6: null, BackendType: "vxlan", BackendData: { VNI: 1, VtepMAC: mac } });
  const put = (key: string, v: string) => etcdctl(UL, endpoint, ["put", `${PREFIX}/subnets/${key}`, v]);
  await put("10.5.0.0-16", value("192.0.2.99", "0a:00:00:00:00:99"));
  await put(free.replace("/", "-"), value("192.0.2.98", h1.vtepMac!));
  await put(`${h1.subnetIP}-25`, value("192.0.2.97", "0a:00:00:00:00:97"));

  const h3 = await labAddHost({ ...LAB, readyTimeoutMs: 60_000 });
  const after = labState(LAB);
  const pairs = await pingAllPairs(after, { converge: true });
  expect(pairs.filter((p) => !p.ok)).toEqual([]);
  expect(pairs).toHaveLength(6);

  for (const h of after.hosts) {
    const rs = await routes(h.netns);
    expect(rs.some((r) => r.dst === "10.5.0.0/16" && r.dev === "flannel.1")).toBe(false);
    expect(rs.some((r) => r.dst === `${h1.subnetIP}/25`)).toBe(false);
    expect(rs.some((r) => r.dst === free)).toBe(false);
    if (h.index === 1) continue;
    // h1's VTEP MAC still leads to h1, not to the record that copied it.
    const entries = (await fdb(h.netns)).filter((e) => e.mac === h1.vtepMac);
    expect(entries.map((e) => e.dst)).toEqual([h1.publicIP]);
  }
  expect(h3.index).toBe(3);
}, 240_000);
