import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { makeTestCerts, type TestCerts } from "../harness/certs.ts";
import { type EtcdServer, startEtcdServer } from "../harness/etcd-server.ts";
import { freePort } from "../harness/server-process.ts";
import { leaseFromKV } from "../../src/lease.ts";
import { type Store, StoreUnavailableError } from "../../src/store.ts";
import { EtcdClient } from "../../stores/etcd/client-failover.ts";
import { EtcdKeys, LeaseExpiries } from "../../stores/etcd/records.ts";
import { EtcdError, EtcdStore } from "../../stores/etcd/store.ts";
import { runStoreConformance, WatchCollector, waitFor } from "./conformance.ts";

// One etcd for the whole file. The conformance suite registers its tests at load time, so the server is started in
// beforeAll and reached lazily through `server`.
let server: EtcdServer | null = null;
beforeAll(async () => {
  server = await startEtcdServer({});
});
afterAll(async () => {
  await server?.stop();
});
const srv = (): EtcdServer => {
  if (!server) throw new Error("etcd test server did not start");
  return server;
};

const enc = new TextEncoder();
const dec = new TextDecoder();
const b64 = (s: string | Uint8Array) => Buffer.from(typeof s === "string" ? enc.encode(s) : s).toString("base64");

/** A raw v3 gateway call, bypassing the store (as another etcd client would write). */
// biome-ignore lint/suspicious/noExplicitAny: raw gateway JSON, read field by field in the tests
async function gateway(path: string, body: unknown): Promise<Record<string, any>> {
  const r = await fetch(srv().endpoint + path, { method: "POST", body: JSON.stringify(body), signal: AbortSignal.timeout(5000) });
  // biome-ignore lint/suspicious/noExplicitAny: as above
  const j = (await r.json()) as Record<string, any>;
  if (!r.ok) throw new Error(`${path}: ${JSON.stringify(j)}`);
  return j;
}

async function etcdctl(...args: string[]): Promise<string> {
  return etcdctlAt(srv().endpoint, ...args);
}

async function etcdctlAt(endpoint: string, ...args: string[]): Promise<string> {
  const p = Bun.spawn(["etcdctl", `--endpoints=${endpoint}`, "--command-timeout=5s", ...args], {
    env: { ...process.env, ETCDCTL_API: "3" },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`etcdctl ${args.join(" ")} failed (${code}): ${err}`);
  return out;
}

async function compactNow(): Promise<void> {
  const j = await gateway("/v3/kv/range", { key: b64("/"), count_only: true });
  await gateway("/v3/kv/compaction", { revision: j.header.revision, physical: true });
}

// ---- the shared conformance suite ----
const CONF_PREFIX = `/conformance-${process.pid}-${Date.now().toString(36)}`;
runStoreConformance("etcd", {
  open: (): Promise<Store> => EtcdStore.connect({ endpoints: [srv().endpoint], prefix: CONF_PREFIX }),
  restartServer: () => srv().restart(),
  forceHistoryLoss: () => compactNow(),
  async writeRaw(key, bytes) {
    await gateway("/v3/kv/put", { key: b64(`${CONF_PREFIX}/${key}`), value: b64(bytes) });
  },
});

// ---- etcd specifics ----
describe("etcd store specifics", () => {
  const opened: Store[] = [];
  afterAll(async () => {
    await Promise.allSettled(opened.map((s) => s.close()));
  });
  let n = 0;
  /** A store on a fresh prefix (trailing slash on purpose: it must be harmless). */
  async function fresh(): Promise<{ s: EtcdStore; prefix: string }> {
    const prefix = `/flannel-test-${process.pid}-${++n}/network`;
    const s = await EtcdStore.connect({ endpoints: [srv().endpoint], prefix: `${prefix}/` });
    opened.push(s);
    return { s, prefix };
  }

  test("reads keys and values exactly as flanneld writes them (etcdctl, with and without an etcd lease)", async () => {
    const { s, prefix } = await fresh();
    const vx = `{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`;
    const dual = `{"PublicIP":"192.168.64.4","PublicIPv6":"fd00::4","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:46"}}`;
    const hostgw = `{"PublicIP":"192.168.64.5","PublicIPv6":null,"BackendType":"host-gw"}`;
    const config = `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`;

    const grant = await etcdctl("lease", "grant", "86400"); // "lease 694d7c... granted with TTL(86400s)"
    const leaseHex = /lease ([0-9a-f]+) granted/.exec(grant)?.[1];
    expect(leaseHex).toBeDefined();
    await etcdctl("put", `${prefix}/config`, config);
    await etcdctl("put", "--lease", leaseHex!, `${prefix}/subnets/10.5.52.0-24`, vx);
    await etcdctl("put", "--lease", leaseHex!, `${prefix}/subnets/10.5.53.0-24&fc00:0:0:34::-64`, dual);
    await etcdctl("put", `${prefix}/subnets/10.5.54.0-24`, hostgw); // a reservation (Documentation/reservations.md)

    const cfg = await s.get("config");
    expect(dec.decode(cfg!.value)).toBe(config);
    expect(cfg!.expiresAt).toBeNull();

    const listed = await s.list("subnets/");
    const m = new Map(listed.items.map((kv) => [kv.key, kv]));
    expect([...m.keys()].sort()).toEqual(["subnets/10.5.52.0-24", "subnets/10.5.53.0-24&fc00:0:0:34::-64", "subnets/10.5.54.0-24"]);
    expect(dec.decode(m.get("subnets/10.5.52.0-24")!.value)).toBe(vx);
    const now = Date.now();
    const exp = m.get("subnets/10.5.52.0-24")!.expiresAt!;
    expect(exp).toBeGreaterThan(now + 86_000_000);
    expect(exp).toBeLessThanOrEqual(now + 86_400_000 + 1000);
    expect(m.get("subnets/10.5.54.0-24")!.expiresAt).toBeNull();

    // The lease protocol reads them as flannel's leases.
    const l = leaseFromKV(m.get("subnets/10.5.53.0-24&fc00:0:0:34::-64")!);
    expect(l.attrs.publicIPv6).toBe("fd00::4");
    expect(l.ipv6Subnet).not.toBeNull();
    expect(leaseFromKV(m.get("subnets/10.5.54.0-24")!).attrs.backendType).toBe("host-gw");
    // The config is not listed with the subnets.
    expect(listed.items.some((kv) => kv.key === "config")).toBe(false);
  });

  test("a created key carries an etcd lease of the ttl; flannel clients see our writes at the flannel path", async () => {
    const { s, prefix } = await fresh();
    const value = enc.encode(`{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"host-gw"}`);
    const rev = await s.create("subnets/10.5.7.0-24", value, { ttlMs: 86_400_000 });
    expect(rev).not.toBeNull();
    const r = await gateway("/v3/kv/range", { key: b64(`${prefix}/subnets/10.5.7.0-24`) });
    expect(r.kvs.length).toBe(1);
    expect(Buffer.from(r.kvs[0].value, "base64").toString()).toBe(dec.decode(value));
    expect(Number(r.kvs[0].mod_revision)).toBe(rev!);
    const lease = r.kvs[0].lease as string;
    expect(lease).toBeDefined();
    const ttl = await gateway("/v3/lease/timetolive", { ID: lease, keys: true });
    expect(Number(ttl.grantedTTL)).toBe(86400);
    expect(Number(ttl.TTL)).toBeGreaterThan(86000);
    expect(ttl.keys.map((k: string) => Buffer.from(k, "base64").toString())).toEqual([`${prefix}/subnets/10.5.7.0-24`]);

    // etcdctl (what an operator runs) sees the same key.
    const got = await etcdctl("get", `${prefix}/subnets/10.5.7.0-24`, "--print-value-only");
    expect(got.trim()).toBe(dec.decode(value));

    // Renewal: a new lease; the replaced one (now keyless) is revoked.
    const rev2 = await s.update("subnets/10.5.7.0-24", value, rev!, { ttlMs: 86_400_000 });
    expect(rev2!).toBeGreaterThan(rev!);
    const r2 = await gateway("/v3/kv/range", { key: b64(`${prefix}/subnets/10.5.7.0-24`) });
    expect(r2.kvs[0].lease).not.toBe(lease);
    await waitFor("the replaced lease to be revoked", async () => {
      const t = await gateway("/v3/lease/timetolive", { ID: lease });
      return Number(t.TTL) === -1 ? true : undefined;
    });
  });

  test("a reservation (no ttl) has no etcd lease and reads expiresAt null", async () => {
    const { s, prefix } = await fresh();
    await s.create("subnets/10.5.9.0-24", enc.encode(`{"PublicIP":"10.0.0.9","PublicIPv6":null}`));
    const r = await gateway("/v3/kv/range", { key: b64(`${prefix}/subnets/10.5.9.0-24`) });
    expect(r.kvs[0].lease).toBeUndefined();
    expect((await s.get("subnets/10.5.9.0-24"))!.expiresAt).toBeNull();
  });

  test("CAS update and delete with a stale revision fail; an unconditional flannel put in between is detected", async () => {
    const { s, prefix } = await fresh();
    const r1 = (await s.create("subnets/10.5.1.0-24", enc.encode("a"), { ttlMs: 60_000 }))!;
    await etcdctl("put", `${prefix}/subnets/10.5.1.0-24`, "flannel's blind put");
    expect(await s.update("subnets/10.5.1.0-24", enc.encode("b"), r1, { ttlMs: 60_000 })).toBeNull();
    expect(await s.delete("subnets/10.5.1.0-24", r1)).toBe(false);
    const cur = (await s.get("subnets/10.5.1.0-24"))!;
    expect(dec.decode(cur.value)).toBe("flannel's blind put");
    expect(await s.update("subnets/10.5.1.0-24", enc.encode("c"), cur.revision, { ttlMs: 60_000 })).toBeGreaterThan(cur.revision);
  });

  test("a value that is not base64 or a key outside the prefix never breaks list()", async () => {
    const { s, prefix } = await fresh();
    await etcdctl("put", `${prefix}/subnets/10.5.2.0-24`, "ok");
    await etcdctl("put", `${prefix}x/subnets/10.5.3.0-24`, "outside"); // shares the string prefix, not the path
    const l = await s.list("");
    expect(l.items.map((kv) => kv.key)).toEqual(["subnets/10.5.2.0-24"]);
  });

  test("failover: a dead endpoint first still works; all dead => StoreUnavailableError naming each", async () => {
    const dead1 = `http://127.0.0.1:${freePort()}`;
    const dead2 = `http://127.0.0.1:${freePort()}`;
    const prefix = `/flannel-test-${process.pid}-failover`;
    const s = await EtcdStore.connect({ endpoints: [dead1, srv().endpoint], prefix });
    opened.push(s);
    expect(s.location).toBe(`${dead1},${srv().endpoint}`);
    const r = await s.create("config", enc.encode("{}"));
    expect(r).not.toBeNull();
    expect((await s.get("config"))!.revision).toBe(r!);
    // The watch also finds the live endpoint.
    const w = new WatchCollector(s, "subnets/", r!);
    try {
      const r2 = (await s.create("subnets/10.5.4.0-24", enc.encode("x"), { ttlMs: 60_000 }))!;
      await w.until("the put via the second endpoint", () => w.puts().some((kv) => kv.revision === r2));
    } finally {
      await w.stop();
    }

    const down = await EtcdStore.connect({ endpoints: [dead1, dead2], prefix, requestTimeoutMs: 2000 });
    opened.push(down);
    let err: unknown;
    try {
      await down.get("config");
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(StoreUnavailableError);
    expect(String((err as Error).message)).toContain(dead1);
    expect(String((err as Error).message)).toContain(dead2);
  });

  test("failover: a watch whose first endpoint accepts connections but never answers moves on to the next", async () => {
    // A black hole on loopback: TCP accepted, not a byte back. Writes go through a separate client, so nothing but
    // the watch itself can move the watching client off the black hole.
    const hole = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const prefix = `/flannel-test-${process.pid}-blackhole`;
    const watcher = await EtcdStore.connect({
      endpoints: [`http://127.0.0.1:${hole.port}`, srv().endpoint],
      prefix,
      requestTimeoutMs: 500,
    });
    const writer = await EtcdStore.connect({ endpoints: [srv().endpoint], prefix });
    opened.push(watcher, writer);
    const base = (await writer.list("")).revision;
    const w = new WatchCollector(watcher, "subnets/", base);
    try {
      const r = (await writer.create("subnets/10.5.9.0-24", enc.encode("x"), { ttlMs: 60_000 }))!;
      await w.until("the put, seen through the second endpoint", () => w.puts().some((kv) => kv.revision === r), 10_000);
    } finally {
      await w.stop();
      hole.stop(true);
    }
  });

  test("a renewal between the range and the TTL read does not hide a lease (it is read again)", async () => {
    const prefix = `/flannel-test-${process.pid}-renewrace/network`;
    const client = new EtcdClient([srv().endpoint], undefined, undefined, 5000);
    const keys = new EtcdKeys(prefix);
    const leases = new LeaseExpiries(client);
    const key = `${prefix}/subnets/10.5.9.0-24`;
    const l1 = (await gateway("/v3/lease/grant", { TTL: "600" })).ID as string;
    await gateway("/v3/kv/put", { key: b64(key), value: b64("v1"), lease: l1 });
    const stale = keys.parseKVs((await gateway("/v3/kv/range", { key: b64(key) })).kvs, "test");
    // The renewal flannel-bin does: a new lease, the value put under it, the old lease revoked.
    const l2 = (await gateway("/v3/lease/grant", { TTL: "600" })).ID as string;
    await gateway("/v3/kv/put", { key: b64(key), value: b64("v2"), lease: l2 });
    await gateway("/v3/lease/revoke", { ID: l1 });
    expect(await leases.attach(stale)).toEqual([]); // without the re-read the lease looked gone
    const reread = async (k: string) =>
      keys.parseKVs((await gateway("/v3/kv/range", { key: b64(keys.etcdKey(k)) })).kvs, "test").find((r) => r.key === k) ?? null;
    const got = await leases.attach(stale, { reread });
    expect(got.map((kv) => dec.decode(kv.value))).toEqual(["v2"]);
    expect(got[0]!.expiresAt).toBeGreaterThan(Date.now() + 500_000);
    client.close();
  });

  test("lease expiries are cached for as many leases as exist (not cleared at 4,096): a second list asks for none", async () => {
    const { s, prefix } = await fresh();
    const N = 4300;
    // Seeded through the gateway in parallel batches: N leases, one key on each.
    const ids: string[] = [];
    for (let i = 0; i < N; i += 100) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(100, N - i) }, async (_, j) => {
          const id = (await gateway("/v3/lease/grant", { TTL: "600" })).ID as string;
          const n = i + j;
          await gateway("/v3/kv/put", { key: b64(`${prefix}/subnets/10.${(n >> 8) & 255}.${n & 255}.0-24`), value: b64("x"), lease: id });
          return id;
        }),
      );
      ids.push(...batch);
    }
    const first = await s.list("subnets/");
    expect(first.items.length).toBe(N);
    // biome-ignore lint/suspicious/noExplicitAny: the store's private lease cache, looked at from its own test
    const cache = (s as any).leases as LeaseExpiries;
    expect(cache.size).toBeGreaterThanOrEqual(N);
    const calls = { n: 0 };
    const realFetch = globalThis.fetch;
    globalThis.fetch = (async (input: string | URL | Request, init?: RequestInit) => {
      if (String(input).endsWith("/v3/lease/timetolive")) calls.n++;
      return realFetch(input, init);
    }) as typeof fetch;
    try {
      const second = await s.list("subnets/");
      expect(second.items.length).toBe(N);
    } finally {
      globalThis.fetch = realFetch;
    }
    expect(calls.n).toBe(0);
    await Promise.all(ids.map((id) => gateway("/v3/lease/revoke", { ID: id }).catch(() => {})));
  }, 120_000);

  test("bad options are refused with a clear message", async () => {
    await expect(EtcdStore.connect({ endpoints: [], prefix: "/x" })).rejects.toThrow("no etcd endpoints");
    await expect(EtcdStore.connect({ endpoints: ["127.0.0.1:2379"], prefix: "/x" })).rejects.toThrow("http:// or https://");
    await expect(EtcdStore.connect({ endpoints: ["http://127.0.0.1:2379"], prefix: "/x", certfile: "/nope.pem" })).rejects.toThrow(
      "both --etcd-certfile and --etcd-keyfile",
    );
    await expect(
      EtcdStore.connect({ endpoints: ["https://127.0.0.1:2379"], prefix: "/x", certfile: "/nope.pem", keyfile: "/nope.key" }),
    ).rejects.toThrow("cannot read --etcd-certfile /nope.pem");
  });

  test("compaction while a watcher is behind => relist, then the watch continues", async () => {
    const { s } = await fresh();
    const start = await s.list("subnets/");
    await s.create("subnets/10.5.5.0-24", enc.encode("1"));
    await s.create("subnets/10.5.6.0-24", enc.encode("2"));
    await compactNow();
    const w = new WatchCollector(s, "subnets/", start.revision);
    try {
      await w.until("relist", (evs) => evs.some((e) => e.type === "relist"));
      const r = (await s.create("subnets/10.5.8.0-24", enc.encode("3")))!;
      await w.until("the put after the relist", () => w.puts().some((kv) => kv.revision === r));
      expect(w.events[0]!.type).toBe("relist");
    } finally {
      await w.stop();
    }
  });
});

// Last in the file: restarts the server under a running watch.
describe("etcd server restart", () => {
  test("a watch survives an etcd restart and receives writes made after it", async () => {
    const s = await EtcdStore.connect({ endpoints: [srv().endpoint], prefix: `/flannel-test-${process.pid}-restart` });
    try {
      const start = await s.list("subnets/");
      const w = new WatchCollector(s, "subnets/", start.revision);
      try {
        const r1 = (await s.create("subnets/10.5.10.0-24", enc.encode("before")))!;
        await w.until("the put before the restart", () => w.puts().some((kv) => kv.revision === r1));
        const pid = srv().pid;
        await srv().restart();
        expect(srv().pid).not.toBe(pid);
        const r2 = (await s.create("subnets/10.5.11.0-24", enc.encode("after")))!;
        await w.until("the put after the restart", () => w.puts().some((kv) => kv.revision === r2), 20_000);
        expect(w.events.some((e) => e.type === "relist")).toBe(false);
        expect(w.puts().map((kv) => dec.decode(kv.value))).toEqual(["before", "after"]);
      } finally {
        await w.stop();
      }
    } finally {
      await s.close();
    }
  });
});

describe("etcd auth", () => {
  let authServer: EtcdServer | null = null;
  const opened: Store[] = [];
  beforeAll(async () => {
    authServer = await startEtcdServer({});
    const ep = authServer.endpoint;
    await etcdctlAt(ep, "user", "add", "root:rootpw");
    await etcdctlAt(ep, "role", "add", "flannel");
    await etcdctlAt(ep, "role", "grant-permission", "flannel", "--prefix=true", "readwrite", "/auth-net/");
    await etcdctlAt(ep, "user", "add", "flannel:secret");
    await etcdctlAt(ep, "user", "grant-role", "flannel", "flannel");
    await etcdctlAt(ep, "auth", "enable");
  });
  afterAll(async () => {
    await Promise.allSettled(opened.map((s) => s.close()));
    await authServer?.stop();
  });

  test("username/password: reads, writes and watches; re-authenticates when the token dies with a restart", async () => {
    const s = await EtcdStore.connect({ endpoints: [authServer!.endpoint], prefix: "/auth-net", username: "flannel", password: "secret" });
    opened.push(s);
    const r = (await s.create("subnets/10.5.1.0-24", enc.encode("v"), { ttlMs: 60_000 }))!;
    expect(r).toBeGreaterThan(0);
    expect((await s.get("subnets/10.5.1.0-24"))!.expiresAt).not.toBeNull();
    const w = new WatchCollector(s, "subnets/", r);
    try {
      // Simple tokens live in the server's memory: after a restart the store's token is invalid.
      await authServer!.restart();
      const r2 = (await s.update("subnets/10.5.1.0-24", enc.encode("v2"), r, { ttlMs: 60_000 }))!;
      expect(r2).toBeGreaterThan(r);
      await w.until("the put after the restart", () => w.puts().some((kv) => kv.revision === r2), 20_000);
    } finally {
      await w.stop();
    }
  });

  test("a wrong password or no credentials is an error that says so", async () => {
    const bad = await EtcdStore.connect({ endpoints: [authServer!.endpoint], prefix: "/auth-net", username: "flannel", password: "wrong" });
    opened.push(bad);
    const e1 = await bad.get("config").catch((e) => e);
    expect(e1).toBeInstanceOf(EtcdError);
    expect(String(e1.message)).toContain("authentication as flannel");
    const anon = await EtcdStore.connect({ endpoints: [authServer!.endpoint], prefix: "/auth-net" });
    opened.push(anon);
    const e2 = await anon.get("config").catch((e) => e);
    expect(e2).toBeInstanceOf(EtcdError);
  });
});

describe("etcd TLS", () => {
  let certs: TestCerts | null = null;
  let tlsServer: EtcdServer | null = null;
  const opened: Store[] = [];

  beforeAll(async () => {
    certs = await makeTestCerts({ prefix: "flannel-etcd-tls-" });
    tlsServer = await startEtcdServer({ tls: { certFile: certs.serverCertFile, keyFile: certs.serverKeyFile, caFile: certs.caFile } });
  });
  afterAll(async () => {
    await Promise.allSettled(opened.map((s) => s.close()));
    await tlsServer?.stop();
    await certs?.remove();
  });

  test("cafile/certfile/keyfile: mutual TLS works; without a client certificate it fails", async () => {
    expect(tlsServer!.endpoint.startsWith("https://")).toBe(true);
    const s = await EtcdStore.connect({
      endpoints: [tlsServer!.endpoint],
      prefix: "/coreos.com/network",
      cafile: certs!.caFile,
      certfile: certs!.clientCertFile,
      keyfile: certs!.clientKeyFile,
    });
    opened.push(s);
    const r = (await s.create("config", enc.encode("{}")))!;
    const w = new WatchCollector(s, "subnets/", r);
    try {
      const r2 = (await s.create("subnets/10.5.1.0-24", enc.encode("x"), { ttlMs: 60_000 }))!;
      await w.until("a put over TLS", () => w.puts().some((kv) => kv.revision === r2));
    } finally {
      await w.stop();
    }
    const noCert = await EtcdStore.connect({
      endpoints: [tlsServer!.endpoint],
      prefix: "/coreos.com/network",
      cafile: certs!.caFile,
      requestTimeoutMs: 2000,
    });
    opened.push(noCert);
    await expect(noCert.get("config")).rejects.toBeInstanceOf(StoreUnavailableError);
  });
});
