// The lab on the network stores: an etcd or NATS server started inside the underlay namespace, 2 hosts, vxlan.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { labDown, labStatus, labUp, readLabState } from "../../src/lab/lab.ts";
import { processAlive } from "../../src/lab/netns.ts";
import { ensureBinary } from "./helpers.ts";

// Explicit: these tests wait (bounded) for agents and kernels, longer than bun's default per-test timeout.
const TEST_TIMEOUT_MS = 90_000;
const ETCD = { name: "e2etcd" };
const NATS = { name: "e2nats" };
let binary: string;

beforeAll(async () => {
  binary = await ensureBinary();
  await labDown(ETCD);
  await labDown(NATS);
}, 300_000);

afterAll(async () => {
  await labDown(ETCD);
  await labDown(NATS);
}, 60_000);

describe.each([
  ["etcd", ETCD],
  ["nats", NATS],
] as const)("lab on %s", (store, lab) => {
  test("2 hosts reach each other; the server lives in the underlay and down stops it", async () => {
    const report = await labUp({ ...lab, hosts: 2, backend: "vxlan", store, binary });
    expect(report.pairs.filter((p) => !p.ok)).toEqual([]);
    const s = readLabState(lab)!;
    expect(s.servers).toHaveLength(1);
    const srv = s.servers[0]!;
    expect(srv.kind).toBe(store);
    expect(processAlive(srv.pid)).toBe(true);
    expect(s.storeFlags.join(" ")).toContain("192.0.2.1");
    const st = await labStatus(lab);
    expect(st.ok).toBe(true);
    expect(st.hosts.every((h) => h.ready)).toBe(true);

    const down = await labDown(lab);
    expect(down.errors).toEqual([]);
    expect(processAlive(srv.pid)).toBe(false);
    for (const h of s.hosts) expect(h.agentPid === null || !processAlive(h.agentPid)).toBe(true);
  }, TEST_TIMEOUT_MS);
});
