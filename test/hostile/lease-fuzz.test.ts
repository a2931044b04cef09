// Seeded fuzz of hostile lease records (issue 12), on every store against its real server: random mutations of
// valid leases and keys plus the issue's hand-written cases, some present before the watch starts and some written
// while it runs, driven through the real peer watch, the real vxlan backend and the agent's peer loop into a
// recording target that checks every fragment with the kernel layer's validators. Asserts: no exception escapes,
// only the valid peers reach desired kernel state, a valid peer is never taken out, every log line stays one line.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { consola } from "../../src/log.ts";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createBackend } from "../../backends/index.ts";
import { type PeerTarget, runPeerLoop } from "../../src/agent/peer-loop.ts";
import { parseNetworkConfig } from "../../src/config.ts";
import { containsIP, parseCIDR, parseIP } from "../../src/ipmath.ts";
import { validFdb, validNeigh, validRoute } from "../../src/kernel/validate.ts";
import type { StateFragment } from "../../src/kernel/types.ts";
import { type Lease, leaseFromKV } from "../../src/lease.ts";
import { watchPeers } from "../../src/peer-watch.ts";
import type { Store } from "../../src/store.ts";
import { EtcdStore } from "../../stores/etcd/store.ts";
import { NatsStore } from "../../stores/nats/store.ts";
import { SqliteStore } from "../../stores/sqlite.ts";
import { type EtcdServer, startEtcdServer } from "../harness/etcd-server.ts";
import { type NatsServer, startNatsServer } from "../harness/nats-server.ts";

setDefaultTimeout(120_000);

const SEED = Number(process.env.FLANNEL_BIN_FUZZ_SEED ?? 12);
const GENERATED = 1000;
const VALID = 30;
const CFG = parseNetworkConfig('{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}');
const NETWORK = parseCIDR("10.0.0.0/8");
const OWN_KEY = "subnets/10.0.1.0-24";
const OWN_MAC = "0a:00:00:00:01:01";

/** mulberry32: small, seedable, good enough to pick mutations. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Rec {
  key: string;
  value: Uint8Array;
  /** A record the generator made valid on purpose (every other one has at least one invalidating mutation). */
  valid: boolean;
}

const enc = (s: string) => new TextEncoder().encode(s);
const json = (o: unknown) => enc(JSON.stringify(o));
const mac = (i: number) => `0a:00:00:00:${((i >> 8) & 0xff).toString(16).padStart(2, "0")}:${(i & 0xff).toString(16).padStart(2, "0")}`;
const vxValue = (ip: string, m: string, extra: Record<string, unknown> = {}) => ({
  PublicIP: ip,
  PublicIPv6: null,
  BackendType: "vxlan",
  BackendData: { VNI: 1, VtepMAC: m },
  ...extra,
});

function validPeers(): Rec[] {
  const out: Rec[] = [];
  for (let i = 0; i < VALID; i++)
    out.push({ key: `subnets/10.0.${i + 2}.0-24`, value: json(vxValue(`192.0.2.${i + 2}`, mac(i + 2))), valid: true });
  return out;
}

/** Every case the issue names, written by hand. */
function issueCases(): Rec[] {
  const v = (k: string, o: unknown) => ({ key: k, value: typeof o === "string" ? enc(o) : json(o), valid: false });
  return [
    v("subnets/10.0.0.0-8", vxValue("192.0.2.200", mac(200))), // the whole Network
    v("subnets/10.0.0.0-9", vxValue("192.0.2.201", mac(201))),
    v("subnets/10.0.2.0-25", vxValue("192.0.2.202", mac(202))), // a /25 inside a live /24
    v("subnets/10.0.2.128-25", vxValue("192.0.2.203", mac(203))),
    v("subnets/10.0.4.0-31", vxValue("192.0.2.204", mac(204))),
    v("subnets/10.0.150.0-24", vxValue("192.0.2.205", mac(2))), // another host's VtepMAC
    v("subnets/10.0.151.0-24", vxValue("169.254.1.1", mac(206))),
    v("subnets/10.0.152.0-24", vxValue("0.1.2.13", mac(207))),
    v("subnets/10.0.153.0-24", vxValue("192.0.2.208", "00:00:00:00:00:00")),
    v("subnets/10.0.154.0-24", vxValue("192.0.2.209", "01:00:5e:00:00:01")),
    v("subnets/10.0.155.0-24", vxValue("255.255.255.255", mac(210))),
    v("subnets/10.0.156.0-24", vxValue("127.0.0.1", mac(211))),
    v("subnets/10.0.157.0-24", vxValue("224.0.0.1", mac(212))),
    v("subnets/10.0.158.0-24", vxValue("240.0.0.1", mac(213))),
    v("subnets/10.0.3.0-24&fc00::-64", vxValue("192.0.2.214", mac(214))), // overlaps a live /24 under another key
    v("subnets/10.0.1.0-24&fc00:0:0:1::-64", vxValue("192.0.2.215", mac(215))), // overlaps our own subnet
    v("subnets/10.0.159.0-24", vxValue("192.0.2.216", OWN_MAC)), // our own MAC
    v("subnets/0.0.0.0-0", vxValue("192.0.2.217", mac(217))),
    v("subnets/10.0.160.0-24", '{"PublicIP":"10.0.0.0/8\\nFAKE [agent] ready","BackendType":"vxlan"}'),
    v("subnets/10.0.161.0-24", `{"PublicIP":"192.0.2.9","BackendType":"vxlan\\u0000","BackendData":{"VNI":1,"VtepMAC":"${mac(218)}"}}`),
    v("subnets/10.0.162.0-24", "\u0000\u0001garbage\n[agent] ready"),
    v("subnets/10.0.163.0-24", `{"PublicIP":"192.0.2.9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"${"x".repeat(70_000)}"}}`),
    v("subnets/10.0.164.0-24", `{"__proto__":{"PublicIP":"192.0.2.9"},"BackendType":"vxlan"}`),
    v("subnets/10.0.165.0-24", vxValue("192.0.2.219", mac(219), { BackendType: "host-gw" })),
    v("subnets/10.0.166.0-24", { ...vxValue("192.0.2.220", mac(220)), BackendData: { VNI: 2, VtepMAC: mac(220) } }),
    v("subnets/not-a-key\nFAKE", vxValue("192.0.2.221", mac(221))),
    v("subnets/10.0.167.1-24", vxValue("192.0.2.222", mac(222))), // host bits
    v("subnets/11.0.0.0-24", vxValue("192.0.2.223", mac(223))), // outside Network
  ];
}

/** Random mutations of valid leases and keys; each record gets at least one mutation that makes it unusable. */
function generated(r: () => number, n: number): Rec[] {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const int = (lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
  const reserved = () =>
    pick([
      () => `0.${int(0, 255)}.${int(0, 255)}.${int(0, 255)}`,
      () => `127.${int(0, 255)}.${int(0, 255)}.${int(1, 254)}`,
      () => `169.254.${int(0, 255)}.${int(1, 254)}`,
      () => `${int(224, 239)}.${int(0, 255)}.${int(0, 255)}.${int(0, 255)}`,
      () => `${int(240, 255)}.${int(0, 255)}.${int(0, 255)}.${int(0, 255)}`,
    ])();
  const freshSubnet = () => `10.${int(1, 255)}.${int(0, 255)}.0`; // never 10.0.x: that is where valid peers live
  const junk = () =>
    pick(["", "\n", "\u0000", "x".repeat(int(1, 300)), "\u202e\u2028", "[agent] ready", "10.0.0.0/8\nFAKE", "\ud800", "%s%n", "'; reboot"]);
  const keyMutations: (() => { key: string; sub?: string })[] = [
    () => ({ key: `subnets/${freshSubnet()}-${pick([0, 1, 8, 9, 16, 23, 25, 26, 30, 31])}` }), // wrong prefix
    () => ({ key: `subnets/10.0.0.0-${int(0, 23)}` }), // covers the whole network or a big part
    () => ({ key: `subnets/${int(11, 223)}.${int(0, 255)}.${int(0, 255)}.0-24` }), // outside
    () => ({ key: `subnets/10.${int(1, 255)}.${int(0, 255)}.${int(1, 255)}-24` }), // host bits
    () => ({ key: `subnets/${junk()}` }),
    () => ({ key: `subnets/10.0.${int(2, VALID + 1)}.0-24&fc00:0:${int(1, 999).toString(16)}::-64` }), // overlaps a valid peer
    () => ({ key: `subnets/10.0.${int(2, VALID + 1)}.0-${pick([25, 26, 28, 30])}` }), // inside a valid peer
    () => ({ key: `subnets/${freshSubnet()}-24&FC00::-64` }), // IPv6 part not canonical
  ];
  type Mutation = (v: Record<string, unknown>) => void;
  const valueMutations: Mutation[] = [
    (v) => void (v.PublicIP = reserved()),
    (v) => void (v.BackendData = { VNI: 1, VtepMAC: mac(int(2, VALID + 1)) }), // a valid peer's MAC
    (v) =>
      void (v.BackendData = {
        VNI: 1,
        VtepMAC: pick(["00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "01:02:03:04:05:06", "33:33:00:00:00:01"]),
      }),
    (v) => void (v.BackendData = { VNI: 1, VtepMAC: junk() }),
    (v) => void (v.BackendData = pick([null, 5, "x", [], { VNI: "1" }, { VNI: -1, VtepMAC: mac(900) }])),
    (v) => void (v.PublicIP = pick([junk(), 5, null, [], {}, "1.2.3.4.5", "::1"])),
    (v) => void (v.PublicIPv6 = pick(["fe80::1", "ff02::1", "::1", "::", junk(), 7])),
    (v) => void (v.BackendType = pick(["host-gw", "udp", junk(), 1])),
    (v) => void (v.BackendData = { VNI: int(2, 16777215), VtepMAC: mac(int(1000, 4000)) }), // another VNI
  ];
  const out: Rec[] = [];
  for (let i = 0; i < n; i++) {
    const base = vxValue(`192.0.${int(3, 250)}.${int(1, 254)}`, mac(1000 + i)) as Record<string, unknown>;
    let key = `subnets/${freshSubnet()}-24`;
    const byKey = r() < 0.4;
    if (byKey) key = pick(keyMutations)().key;
    if (!byKey || r() < 0.3) for (let m = int(1, 2); m > 0; m--) pick(valueMutations)(base);
    let value = json(base);
    const raw = r();
    if (raw < 0.05)
      value = enc(JSON.stringify(base).slice(0, int(0, 40))); // truncated JSON
    else if (raw < 0.08)
      value = Uint8Array.from({ length: int(0, 64) }, () => int(0, 255)); // random bytes
    else if (raw < 0.1)
      value = enc(`{"PublicIP":"192.0.2.9","Pad":"${"y".repeat(70_000)}"}`); // over the record limit
    else if (raw < 0.12)
      value = enc(
        `{"PublicIP":"192.0.2.9","publicip":"${reserved()}","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"${mac(2000 + i)}"}}`,
      ); // duplicate key, last wins
    out.push({ key, value, valid: false });
  }
  return out;
}

/** The agent's reconciler as seen by the peer loop, recording what it is asked for and validating it. */
class RecordingTarget implements PeerTarget {
  readonly state = new Map<string, StateFragment>();
  readonly deleted: string[] = [];
  set(id: string, f: StateFragment): void {
    for (const r of f.routes ?? []) validRoute(r);
    for (const n of f.neighs ?? []) validNeigh(n);
    for (const d of f.fdbs ?? []) validFdb(d);
    this.state.set(id, f);
  }
  has(id: string): boolean {
    return this.state.has(id);
  }
  delete(id: string): void {
    this.deleted.push(id);
    this.state.delete(id);
  }
  async fullReconcile() {
    return { added: 0, repaired: 0, removed: 0 };
  }
  start(): void {}
}

interface Harness {
  open(): Promise<Store>;
  stop(): Promise<void>;
}

async function runFuzz(h: Harness, seed: number): Promise<void> {
  const r = rng(seed);
  const store = await h.open();
  const ac = new AbortController();
  const logged: string[] = [];
  const saved = consola.options.reporters;
  consola.setReporters([{ log: (o: { args: unknown[] }) => void logged.push(o.args.map(String).join(" ")) }]);
  try {
    const ownLease: Lease = leaseFromKV({ key: OWN_KEY, value: json(vxValue("192.0.2.1", OWN_MAC)), revision: 1, expiresAt: null });
    await store.create(OWN_KEY, json(vxValue("192.0.2.1", OWN_MAC)), { ttlMs: 600_000 });
    const valid = validPeers();
    for (const v of valid) expect(await store.create(v.key, v.value, { ttlMs: 600_000 })).not.toBeNull();
    const hostile = [...issueCases(), ...generated(r, GENERATED)];
    const write = async (x: Rec) => {
      try {
        const cur = await store.get(x.key);
        if (!cur) await store.create(x.key, x.value, { ttlMs: 600_000 });
        else await store.update(x.key, x.value, cur.revision, { ttlMs: 600_000 });
      } catch {
        // a store may refuse a key (e.g. its own key rules); that is fine, the record just does not exist
      }
    };
    const before = hostile.slice(0, hostile.length / 2);
    const during = hostile.slice(hostile.length / 2);
    for (const x of before) await write(x);

    const backend = createBackend({
      config: CFG,
      extIface: { name: "eth0", index: 2, mtu: 1500, ipv4: "192.0.2.1", ipv4Nets: [parseCIDR("192.0.2.0/24")] },
      publicIP: "192.0.2.1",
    });
    const target = new RecordingTarget();
    let firstSync = false;
    const loop = runPeerLoop(
      watchPeers(store, () => OWN_KEY, ac.signal, { config: CFG, own: () => ownLease }),
      {
        backend,
        target,
        onOwn: () => {},
        onFirstSync: () => {
          firstSync = true;
        },
      },
    );
    const until = async (what: string, cond: () => boolean, ms = 30_000) => {
      const end = Date.now() + ms;
      while (!cond() && Date.now() < end) await Bun.sleep(20);
      if (!cond()) throw new Error(`timed out waiting for ${what}`);
    };
    await until("first sync", () => firstSync);
    for (const x of during) await write(x);
    // Deletes and re-writes of hostile records while the watch runs.
    for (let i = 0; i < 50; i++) {
      const x = pick(hostile, r);
      const cur = await store.get(x.key).catch(() => null);
      if (cur && r() < 0.5) await store.delete(x.key, cur.revision);
      else await write(x);
    }
    // A sentinel written last: once it is programmed, the watch has seen everything before it.
    const sentinel: Rec = { key: "subnets/10.0.100.0-24", value: json(vxValue("192.0.2.100", mac(100))), valid: true };
    await store.create(sentinel.key, sentinel.value, { ttlMs: 600_000 });
    await until("the sentinel", () => target.state.has(sentinel.key));

    const want = [...valid, sentinel].map((v) => v.key).sort();
    expect([...target.state.keys()].sort()).toEqual(want);
    expect(target.deleted.filter((id) => want.includes(id))).toEqual([]); // valid peers never taken out
    // What is desired stays inside the network, and every MAC points at its own host.
    const macOwner = new Map([...valid, sentinel].map((v) => [JSON.parse(new TextDecoder().decode(v.value)).BackendData.VtepMAC, v]));
    for (const f of target.state.values()) {
      for (const rt of f.routes ?? []) expect(containsIP(NETWORK, parseCIDR(rt.dst).ip)).toBe(true);
      for (const d of f.fdbs ?? []) {
        const owner = macOwner.get(d.mac);
        expect(owner).toBeDefined();
        expect(JSON.parse(new TextDecoder().decode(owner!.value)).PublicIP).toBe(d.dst);
        expect(parseIP(d.dst)?.family).toBe(4);
      }
    }
    for (const line of logged) {
      expect(line).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/);
      expect(line.length).toBeLessThan(1500);
    }
    ac.abort();
    await loop; // ends without throwing
  } finally {
    consola.setReporters(saved);
    ac.abort();
    await store.close();
  }
}

const pick = <T>(xs: readonly T[], r: () => number): T => xs[Math.floor(r() * xs.length)]!;

describe("hostile lease records (seeded fuzz)", () => {
  test("sqlite", async () => {
    const dir = mkdtempSync(join(tmpdir(), "fb-fuzz-"));
    try {
      await runFuzz({ open: async () => SqliteStore.open(join(dir, "f.db")), stop: async () => {} }, SEED);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  describe("etcd", () => {
    let srv: EtcdServer | null = null;
    beforeAll(async () => {
      srv = await startEtcdServer({});
    });
    afterAll(async () => {
      await srv?.stop();
    });
    test("etcd", async () => {
      await runFuzz(
        { open: () => EtcdStore.connect({ endpoints: [srv!.endpoint], prefix: `/fuzz-${SEED}` }), stop: async () => {} },
        SEED + 1,
      );
    });
  });

  describe("nats", () => {
    let srv: NatsServer | null = null;
    beforeAll(async () => {
      srv = await startNatsServer({});
    }, 30_000);
    afterAll(async () => {
      await srv?.stop();
    });
    test("nats", async () => {
      await runFuzz({ open: () => NatsStore.connect({ servers: [srv!.url], bucket: `fuzz-${SEED}` }), stop: async () => {} }, SEED + 2);
    });
  });
});
