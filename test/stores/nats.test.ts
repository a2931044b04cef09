// NATS store against a real nats-server 2.9 (started here on 127.0.0.1, stopped by PID in afterAll).

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { decode as cborDecode } from "cbor-x/decode-no-eval";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm, type KV as NatsKV } from "@nats-io/kv";
import { StoreUnavailableError, type Store } from "../../src/store.ts";
import { makeTestCerts, type TestCerts } from "../harness/certs.ts";
import { startNatsServer, type NatsServer } from "../harness/nats-server.ts";
import { peerBinary } from "../helpers/peers.ts";
import { BunTransport, connectNats } from "../../stores/nats/bun-transport.ts";
import { NatsStore, decodeNatsKey, encodeNatsKey, natsPrefixFilter } from "../../stores/nats/store.ts";
import { runStoreConformance, WatchCollector, waitFor } from "./conformance.ts";

// A request caught by a server restart waits for its timeout (5 s) before the retry: more than bun's default.
setDefaultTimeout(30_000);

let server: NatsServer | null = null;
/** A current nats-server (Go-built by scripts/setup.sh), so the suite runs against 2.9 and a current release. */
let current: NatsServer | null = null;
beforeAll(async () => {
  [server, current] = await Promise.all([startNatsServer({}), startNatsServer({ natsServerPath: peerBinary("nats-server") })]);
}, 30_000);
afterAll(async () => {
  await Promise.allSettled([server?.stop(), current?.stop()]);
});

const enc = new TextEncoder();
const bytes = (s: string) => enc.encode(s);
let bucketCounter = 0;
const freshBucket = (label: string) => `t-${label}-${process.pid}-${++bucketCounter}`;

function url(): string {
  if (!server) throw new Error("nats-server not started");
  return server.url;
}

/** A plain client (not the store) for looking under the hood. */
async function withRawKv<T>(bucket: string, fn: (kv: NatsKV, nc: NatsConnection) => Promise<T>, at = url()): Promise<T> {
  const nc = await connect({ servers: at, maxReconnectAttempts: 5 });
  try {
    const kv = await new Kvm(nc).open(bucket);
    return await fn(kv, nc);
  } finally {
    await nc.close();
  }
}

// ---- the shared conformance suite, on Debian's 2.9.10 and on a current nats-server ----
function conformanceOn(label: string, srv: () => NatsServer | null): void {
  const at = () =>
    srv()?.url ??
    (() => {
      throw new Error(`${label}: nats-server not started`);
    })();
  const bucket = `conformance-${process.pid}`;
  runStoreConformance(label, {
    open: (): Promise<Store> => NatsStore.connect({ servers: [at()], bucket }),
    restartServer: () => srv()!.restart(),
    async forceHistoryLoss() {
      // Keep every key's current value but lose all history: read the latest values, purge the whole stream, write
      // them back. Every old revision is then before the stream's first sequence.
      await withRawKv(
        bucket,
        async (kv, nc) => {
          const latest: [string, Uint8Array][] = [];
          for await (const k of await kv.keys()) {
            const e = await kv.get(k);
            if (e && e.operation === "PUT") latest.push([k, e.value]);
          }
          const jsm = await jetstreamManager(nc);
          await jsm.streams.purge(`KV_${bucket}`);
          for (const [k, v] of latest) await kv.put(k, v);
        },
        at(),
      );
    },
    async writeRaw(key, value) {
      await withRawKv(bucket, (kv) => kv.put(encodeNatsKey(key), value), at());
    },
  });
}
conformanceOn("nats", () => server);
conformanceOn("nats (current server)", () => current);

describe("nats: lists in one batched direct get on nats-server >= 2.11 (a consumer otherwise)", () => {
  /** The store's bucket handle, and a count of the consumers its lists make (the path that is not the direct get). */
  function lookInside(s: NatsStore): { b: { directBatch: boolean; written: number }; consumers: () => number } {
    // biome-ignore lint/suspicious/noExplicitAny: the store's bucket handle, looked at from its own test
    const b = (s as any).b;
    let n = 0;
    const real = b.js.consumers.getPushConsumer.bind(b.js.consumers);
    b.js.consumers.getPushConsumer = (...a: unknown[]) => (n++, real(...a));
    return { b, consumers: () => n };
  }

  test("current server: no consumer; the revision is the batch's up-to sequence and a watch from it misses nothing; 2.9 lists the same through a consumer", async () => {
    const bucket = freshBucket("direct");
    const s = await NatsStore.connect({ servers: [current!.url], bucket });
    const old = await NatsStore.connect({ servers: [url()], bucket: freshBucket("direct-29") });
    try {
      const look = lookInside(s);
      const lookOld = lookInside(old);
      expect(look.b.directBatch).toBe(true);
      expect(lookOld.b.directBatch).toBe(false);
      for (const st of [s, old]) {
        await st.create("subnets/10.5.1.0-24", bytes("one"));
        const r2 = (await st.create("subnets/10.5.2.0-24", bytes("two")))!;
        await st.create("other/x", bytes("not listed"));
        await st.delete("subnets/10.5.2.0-24", r2);
        await st.create("subnets/10.5.3.0-24", bytes("three"), { ttlMs: 600_000 });
      }
      const [l, lOld] = await Promise.all([s.list("subnets/"), old.list("subnets/")]);
      expect(look.consumers()).toBe(0);
      expect(lookOld.consumers()).toBe(1);
      const view = (r: typeof l) => r.items.map((kv) => [kv.key, new TextDecoder().decode(kv.value)]);
      expect(view(l)).toEqual([
        ["subnets/10.5.1.0-24", "one"],
        ["subnets/10.5.3.0-24", "three"],
      ]);
      expect(view(lOld)).toEqual(view(l));
      // The stream's last sequence (the deletion marker came before "three": the batch is exact there).
      const last = await withRawKv(bucket, async (_kv, nc) => (await jetstreamManager(nc)).streams.info(`KV_${bucket}`), current!.url);
      expect(l.revision).toBe(last.state.last_seq);
      const w = new WatchCollector(s, "subnets/", l.revision);
      try {
        const r4 = (await s.create("subnets/10.5.4.0-24", bytes("four")))!;
        await w.until("the put written after the list", () => w.puts().some((kv) => kv.revision === r4));
        expect(w.puts().map((kv) => kv.key)).toEqual(["subnets/10.5.4.0-24"]); // and nothing the list already had
      } finally {
        await w.stop();
      }
      // An empty prefix: its revision (the stream's last, "four") from the leader, still no consumer.
      const made = look.consumers(); // the watch's own
      const empty = await s.list("none/");
      expect(empty.items).toEqual([]);
      expect(empty.revision).toBe(l.revision + 1);
      expect(look.consumers()).toBe(made);
      // A client that has not written: an empty prefix is the state at revision 0, in the one direct get. A watch
      // from 0 delivers what comes, and is not "behind history" on a stream whose first messages are gone.
      await withRawKv(
        bucket,
        async (_kv, nc) => {
          await (await jetstreamManager(nc)).streams.purge(`KV_${bucket}`, { filter: `$KV.${bucket}.subnets.10_5_1_0-24` });
        },
        current!.url,
      );
      const reader = await NatsStore.connect({ servers: [current!.url], bucket });
      const lookR = lookInside(reader);
      expect(await reader.list("none/")).toEqual({ items: [], revision: 0 });
      expect(lookR.consumers()).toBe(0);
      const w0 = new WatchCollector(reader, "none/", 0);
      try {
        const ra = (await s.create("none/a", bytes("a")))!;
        await w0.until("the put after the empty list", () => w0.puts().some((kv) => kv.revision === ra));
        expect(w0.events.map((e) => e.type)).toEqual(["put"]);
      } finally {
        await w0.stop();
        await reader.close();
      }
    } finally {
      await Promise.allSettled([s.close(), old.close()]);
    }
  });

  test("a watch from a list's revision does not list the prefix again: none needed with server TTLs, 2.9 seeds its expiry tracking from that list", async () => {
    const s = await NatsStore.connect({ servers: [current!.url], bucket: freshBucket("watch-nolist") });
    const old = await NatsStore.connect({ servers: [url()], bucket: freshBucket("watch-nolist-29") });
    const spy = await connect({ servers: current!.url });
    try {
      let directGets = 0;
      spy.subscribe("$JS.API.DIRECT.GET.>", {
        callback: () => {
          directGets++;
        },
      });
      await spy.flush();
      for (const st of [s, old]) for (let i = 1; i <= 3; i++) await st.create(`subnets/10.5.${i}.0-24`, bytes("lease"), { ttlMs: 600_000 });
      const look = lookInside(s);
      const lookOld = lookInside(old);
      // biome-ignore lint/suspicious/noExplicitAny: as above
      expect(((s as any).b as { serverTtl: boolean }).serverTtl).toBe(true);
      const [l, lOld] = await Promise.all([s.list("subnets/"), old.list("subnets/")]);
      expect(directGets).toBe(1); // the list itself
      const ws = [new WatchCollector(s, "subnets/", l.revision), new WatchCollector(old, "subnets/", lOld.revision)];
      try {
        const [r, rOld] = await Promise.all([
          s.create("subnets/10.5.9.0-24", bytes("new")),
          old.create("subnets/10.5.9.0-24", bytes("new")),
        ]);
        await ws[0]!.until("the new put", () => ws[0]!.puts().some((kv) => kv.revision === r));
        await ws[1]!.until("the new put (2.9)", () => ws[1]!.puts().some((kv) => kv.revision === rOld));
        await spy.flush();
        expect(directGets).toBe(1); // no second list for the watch
        expect(look.consumers()).toBe(1); // the watch's own consumer only
        expect(lookOld.consumers()).toBe(2); // the list and the watch: its expiry tracking is seeded from that list
      } finally {
        await Promise.allSettled(ws.map((w) => w.stop()));
      }
    } finally {
      await Promise.allSettled([s.close(), old.close(), spy.close()]);
    }
  });

  test("a direct get nobody answers (here: the user may not publish to it) costs one 2 s wait, then lists go through a consumer for a while", async () => {
    const denied = await startNatsServer({
      natsServerPath: peerBinary("nats-server"),
      user: "agent",
      password: "pw",
      denyPublish: ["$JS.API.DIRECT.GET.>"],
    });
    let s: NatsStore | null = null;
    try {
      s = await NatsStore.connect({ servers: [denied.url], bucket: freshBucket("direct-denied"), user: "agent", password: "pw" });
      const look = lookInside(s);
      expect(look.b.directBatch).toBe(true); // the server has batches; only this user cannot ask for them
      // biome-ignore lint/suspicious/noExplicitAny: the store's connection, looked at from its own test
      const nc = (look.b as any).nc as NatsConnection;
      let directGets = 0;
      const publish = nc.publish.bind(nc);
      nc.publish = (subject, ...rest) => {
        if (subject.startsWith("$JS.API.DIRECT.GET.")) directGets++;
        return publish(subject, ...rest);
      };
      await s.create("subnets/10.5.1.0-24", bytes("one"));
      await s.create("subnets/10.5.2.0-24", bytes("two"));
      const t0 = performance.now();
      const first = await s.list("subnets/");
      const firstMs = performance.now() - t0;
      expect(first.items.map((kv) => kv.key)).toEqual(["subnets/10.5.1.0-24", "subnets/10.5.2.0-24"]);
      expect(firstMs).toBeGreaterThanOrEqual(1900); // the direct get's timeout, then the consumer
      expect(directGets).toBe(1);
      expect(look.consumers()).toBe(1);
      const second = await s.list("subnets/");
      expect(second.items.length).toBe(2);
      expect(directGets).toBe(1); // paused: straight to the consumer
      expect(look.consumers()).toBe(2);
    } finally {
      await s?.close();
      await denied.stop();
    }
  });

  test("a bucket without allow_direct, more keys than one direct get returns (1024), and a batch older than our own writes all list through a consumer", async () => {
    const noDirect = freshBucket("nodirect");
    await withRawKv(
      noDirect,
      async (_kv, nc) => {
        await new Kvm(nc).create(noDirect, { history: 5, allow_direct: false });
      },
      current!.url,
    );
    const a = await NatsStore.connect({ servers: [current!.url], bucket: noDirect });
    const big = await NatsStore.connect({ servers: [current!.url], bucket: freshBucket("big") });
    try {
      const lookA = lookInside(a);
      expect(lookA.b.directBatch).toBe(false);
      await a.create("subnets/10.5.1.0-24", bytes("one"));
      expect((await a.list("subnets/")).items.map((kv) => kv.key)).toEqual(["subnets/10.5.1.0-24"]);
      expect(lookA.consumers()).toBe(1);

      // allow_direct turned off under a running client: no responder (the server says 503), the consumer lists.
      const later = freshBucket("direct-off");
      const c = await NatsStore.connect({ servers: [current!.url], bucket: later });
      try {
        const lookC = lookInside(c);
        expect(lookC.b.directBatch).toBe(true);
        await c.create("subnets/10.5.1.0-24", bytes("one"));
        await withRawKv(
          later,
          async (_kv, nc) => {
            const jsm = await jetstreamManager(nc);
            const cfg = (await jsm.streams.info(`KV_${later}`)).config;
            await jsm.streams.update(`KV_${later}`, { ...cfg, allow_direct: false });
          },
          current!.url,
        );
        expect((await c.list("subnets/")).items.map((kv) => kv.key)).toEqual(["subnets/10.5.1.0-24"]);
        expect(lookC.consumers()).toBe(1);
      } finally {
        await c.close();
      }

      const lookBig = lookInside(big);
      const n = 1030;
      for (let i = 0; i < n; i += 50) {
        await Promise.all(
          Array.from({ length: Math.min(50, n - i) }, (_, j) => big.create(`subnets/10.${(i + j) >> 8}.${(i + j) & 255}.0-24`, bytes("x"))),
        );
      }
      const l = await big.list("subnets/");
      expect(l.items.length).toBe(n);
      expect(lookBig.consumers()).toBe(1);
      // A batch from a replica behind what this client wrote would hide its writes: not used.
      const small = await NatsStore.connect({ servers: [current!.url], bucket: freshBucket("floor") });
      try {
        const lookSmall = lookInside(small);
        await small.create("subnets/10.5.1.0-24", bytes("one"));
        expect((await small.list("subnets/")).items.length).toBe(1);
        expect(lookSmall.consumers()).toBe(0);
        lookSmall.b.written += 1000; // as if a replica were 1,000 writes behind us
        expect((await small.list("subnets/")).items.length).toBe(1);
        expect(lookSmall.consumers()).toBe(1);
      } finally {
        await small.close();
      }
    } finally {
      await Promise.allSettled([a.close(), big.close()]);
    }
  }, 60_000);
});

describe("nats: server-side per-key TTL on nats-server >= 2.11", () => {
  test("a lease carries Nats-TTL; the server removes it and its delete marker is the watch's delete; 2.9 keeps expiry in the value", async () => {
    const bucket = freshBucket("ttl");
    const s = await NatsStore.connect({ servers: [current!.url], bucket });
    const old = await NatsStore.connect({ servers: [url()], bucket });
    try {
      // biome-ignore lint/suspicious/noExplicitAny: the store's bucket handle, looked at from its own test
      expect(((s as any).b as { serverTtl: boolean }).serverTtl).toBe(true);
      // biome-ignore lint/suspicious/noExplicitAny: as above
      expect(((old as any).b as { serverTtl: boolean }).serverTtl).toBe(false);
      const start = await s.list("subnets/");
      const w = new WatchCollector(s, "subnets/", start.revision);
      try {
        const rev = (await s.create("subnets/10.5.7.0-24", bytes("lease"), { ttlMs: 1500 }))!;
        const raw = await withRawKv(
          bucket,
          async (_kv, nc) => (await jetstreamManager(nc)).streams.getMessage(`KV_${bucket}`, { seq: rev }),
          current!.url,
        );
        expect(raw?.header.get("Nats-TTL")).toBeTruthy(); // the server raises a TTL below its marker TTL (5 s) to it
        // A renewal by compare-and-set keeps a server TTL too.
        const rev2 = (await s.update("subnets/10.5.7.0-24", bytes("renewed"), rev, { ttlMs: 1500 }))!;
        await w.until("the delete for the expired lease", (evs) => evs.some((e) => e.type === "delete"), 15_000);
        const del = w.deletes()[0]!;
        expect(del.revision).toBeGreaterThan(rev2); // the server's marker, not a delete synthesised at the recorded time
        const last = await withRawKv(bucket, (kv) => kv.get(encodeNatsKey("subnets/10.5.7.0-24")), current!.url);
        expect(last?.operation).toBe("PURGE"); // a MaxAge marker: the server removed it
        expect(await s.get("subnets/10.5.7.0-24")).toBeNull();
        expect(await s.create("subnets/10.5.7.0-24", bytes("again"), { ttlMs: 60_000 })).not.toBeNull();
      } finally {
        await w.stop();
      }
    } finally {
      await Promise.allSettled([s.close(), old.close()]);
    }
  });
});

// ---- NATS-specific ----
describe("nats key scheme", () => {
  test("maps logical keys onto NATS tokens and back exactly", () => {
    const cases: [string, string][] = [
      ["config", "config"],
      ["subnets/10.5.52.0-24", "subnets.10_5_52_0-24"],
      ["subnets/10.5.52.0-24&fc00:0:0:34::-64", "subnets.10_5_52_0-24/26fc00=0=0=34==-64"],
      ["a/v6/b", "a.v6.b"], // no token is special
      ["odd_key=x*y>z", "odd/5fkey/3dx/2ay/3ez"],
      ["ünï", "/c3/bcn/c3/af"],
    ];
    for (const [logical, natsKey] of cases) {
      expect(encodeNatsKey(logical)).toBe(natsKey);
      expect(decodeNatsKey(natsKey)).toBe(logical);
    }
  });

  test("rejects keys it cannot represent and NATS keys that are not its encodings", () => {
    for (const bad of ["", "a//b", "/a", "a/"]) {
      expect(() => encodeNatsKey(bad)).toThrow(/empty path segment/);
    }
    // "&" is just a character to the scheme.
    expect(encodeNatsKey("x&")).toBe("x/26");
    expect(decodeNatsKey("x/26")).toBe("x&");
    for (const foreign of ["a..b", ".a", "a/2e", "a/zz", "A/5F", "a/ff"]) {
      expect(decodeNatsKey(foreign)).toBeNull();
    }
  });

  test("prefix filters", () => {
    expect(natsPrefixFilter("subnets/")).toBe("subnets.>");
    expect(natsPrefixFilter("subnets/10.5.")).toBe("subnets.>");
    expect(natsPrefixFilter("")).toBe(">");
    expect(natsPrefixFilter("a/b.c/")).toBe("a.b_c.>");
  });
});

describe("nats store", () => {
  test("creates the bucket if it is missing, with small history and no server TTL", async () => {
    const bucket = freshBucket("create");
    const s = await NatsStore.connect({ servers: [url()], bucket });
    try {
      expect(s.kind).toBe("nats");
      expect(s.location).toBe(url());
      const st = await withRawKv(bucket, (kv) => kv.status());
      expect(st.history).toBe(5);
      expect(st.ttl).toBe(0);
      // A second client opens the existing bucket.
      const s2 = await NatsStore.connect({ servers: [url()], bucket });
      await s2.close();
    } finally {
      await s.close();
    }
  });

  test("values are stored as CBOR {v, e, o} under the mapped key", async () => {
    const bucket = freshBucket("record");
    const s = await NatsStore.connect({ servers: [url()], bucket, owner: "node-a" });
    try {
      const before = Date.now();
      const rev = (await s.create("subnets/10.5.52.0-24", bytes("lease"), { ttlMs: 60_000 }))!;
      const raw = await withRawKv(bucket, (kv) => kv.get("subnets.10_5_52_0-24"));
      expect(raw!.revision).toBe(rev);
      const rec = cborDecode(raw!.value) as { v: Uint8Array; e: number; o: string };
      expect(new TextDecoder().decode(rec.v)).toBe("lease");
      expect(rec.e).toBeGreaterThanOrEqual(before + 60_000);
      expect(rec.o).toBe("node-a");
    } finally {
      await s.close();
    }
  });

  test("an expired key is seen as a delete by a watcher and then CAS-deleted", async () => {
    const bucket = freshBucket("expiry");
    const s = await NatsStore.connect({ servers: [url()], bucket });
    // Written before the watch starts: the watcher learns its expiry from its starting snapshot.
    const rOld = (await s.create("subnets/10.0.1.0-24", bytes("old"), { ttlMs: 1200 }))!;
    const start = await s.list("subnets/");
    const w = new WatchCollector(s, "subnets/", start.revision);
    try {
      const rNew = (await s.create("subnets/10.0.2.0-24&fc00::-64", bytes("new"), { ttlMs: 800 }))!;
      await w.until("both expiries", () => w.deletes().length >= 2);
      expect(
        w
          .deletes()
          .map((d) => d.key)
          .sort(),
      ).toEqual(["subnets/10.0.1.0-24", "subnets/10.0.2.0-24&fc00::-64"]);
      // The watcher cleans up with CAS deletes: the server ends up with DEL markers after the expired puts.
      await withRawKv(bucket, async (kv) => {
        for (const [k, r] of [
          ["subnets.10_0_1_0-24", rOld],
          ["subnets.10_0_2_0-24/26fc00==-64", rNew],
        ] as const) {
          await waitFor(`the cleanup delete of ${k}`, async () => {
            const e = await kv.get(k);
            return e && e.operation === "DEL" && e.revision > r ? true : undefined;
          });
        }
      });
      await Bun.sleep(200);
      // Each key was reported deleted exactly once (the cleanup's DEL marker is not reported again).
      expect(w.deletes().length).toBe(2);
      expect(w.events.filter((e) => e.type === "put").length).toBe(1);
    } finally {
      await w.stop();
      await s.close();
    }
  });

  test("user/password auth works, and a missing or wrong password fails clearly", async () => {
    const authServer = await startNatsServer({ user: "flannel", password: "s3cret" });
    try {
      const s = await NatsStore.connect({ servers: [authServer.url], user: "flannel", password: "s3cret", bucket: "auth" });
      try {
        expect(await s.create("config", bytes("{}"))).toBeGreaterThan(0);
      } finally {
        await s.close();
      }
      await expect(NatsStore.connect({ servers: [authServer.url], bucket: "auth" })).rejects.toThrow(/authorization failed/);
      await expect(NatsStore.connect({ servers: [authServer.url], user: "flannel", password: "nope", bucket: "auth" })).rejects.toThrow(
        /authorization failed/,
      );
    } finally {
      await authServer.stop();
    }
  }, 30_000);

  test("token auth works", async () => {
    const tokenServer = await startNatsServer({ token: "tok-123" });
    try {
      const s = await NatsStore.connect({ servers: [tokenServer.url], token: "tok-123" });
      await s.close();
      await expect(NatsStore.connect({ servers: [tokenServer.url], token: "wrong" })).rejects.toThrow(/authorization failed/);
    } finally {
      await tokenServer.stop();
    }
  }, 30_000);

  test("a replicated bucket is refused on nats-server 2.9 (no compare-and-set across replicas), before anything is created", async () => {
    const bucket = freshBucket("r3");
    const err = await NatsStore.connect({ servers: [url()], bucket, replicas: 3 }).then(
      () => null,
      (e: Error) => e,
    );
    expect(err).not.toBeNull();
    expect(err).not.toBeInstanceOf(StoreUnavailableError); // settings that can never work here: not retried
    expect(err!.message).toContain("3 replicas on nats-server 2.9.10");
    expect(err!.message).toContain("run nats-server 2.10 or later for a replicated bucket, or use --nats-replicas 1");
    const nc = await connect({ servers: url(), maxReconnectAttempts: 5 });
    try {
      const names: string[] = [];
      for await (const n of (await jetstreamManager(nc)).streams.names()) names.push(n);
      expect(names).not.toContain(`KV_${bucket}`);
    } finally {
      await nc.close();
    }
  });

  test("an unreachable server is a StoreUnavailableError naming it", async () => {
    const dead = await startNatsServer({});
    const deadUrl = dead.url;
    await dead.stop();
    const err = await NatsStore.connect({ servers: [deadUrl], connectTimeoutMs: 1000 }).catch((e) => e);
    expect(err).toBeInstanceOf(StoreUnavailableError);
    expect(String(err.message)).toContain(deadUrl);
  }, 30_000);

  test("a watch survives a server restart and sees expiries after it", async () => {
    const bucket = freshBucket("restart");
    const s = await NatsStore.connect({ servers: [url()], bucket });
    const start = await s.list("subnets/");
    const w = new WatchCollector(s, "subnets/", start.revision);
    try {
      await s.create("subnets/10.1.0.0-24", bytes("a"));
      await w.until("the first put", () => w.puts().length >= 1);
      await server!.restart();
      const r = await waitFor(
        "a write after the restart",
        async () => (await s.create("subnets/10.1.1.0-24", bytes("b"), { ttlMs: 1000 }).catch(() => undefined)) ?? undefined,
        20_000,
      );
      await w.until("the put after the restart", () => w.puts().some((kv) => kv.revision === r), 20_000);
      await w.until("its expiry", () => w.deletes().some((d) => d.key === "subnets/10.1.1.0-24"));
      expect(w.events.some((e) => e.type === "relist")).toBe(false);
    } finally {
      await w.stop();
      await s.close();
    }
  }, 60_000);
});

describe("nats TLS", () => {
  let certs: TestCerts | null = null;
  // Server-only TLS (clients check the server against the CA) and mutual TLS (verify: the server demands a client
  // certificate signed by the CA).
  let serverTls: NatsServer | null = null;
  let mutualTls: NatsServer | null = null;

  beforeAll(async () => {
    certs = await makeTestCerts({ prefix: "flannel-nats-tls-" });
    const tls = { certFile: certs.serverCertFile, keyFile: certs.serverKeyFile };
    serverTls = await startNatsServer({ tls });
    mutualTls = await startNatsServer({ tls: { ...tls, caFile: certs.caFile, verify: true } });
  }, 60_000);
  afterAll(async () => {
    await Promise.allSettled([serverTls?.stop(), mutualTls?.stop()]);
    await certs?.remove();
  });

  /** create/get/watch round trip over an open store. */
  async function roundTrip(s: Store): Promise<void> {
    const r = (await s.create("config", bytes("{}")))!;
    expect(new TextDecoder().decode((await s.get("config"))!.value)).toBe("{}");
    const w = new WatchCollector(s, "subnets/", r);
    try {
      const r2 = (await s.create("subnets/10.5.1.0-24", bytes("x"), { ttlMs: 60_000 }))!;
      await w.until("a put over TLS", () => w.puts().some((kv) => kv.revision === r2));
    } finally {
      await w.stop();
    }
  }

  test("plain connections run on Bun's sockets; TLS (asked for, or required by the server) on nats.js's Node transport", async () => {
    const transportOf = (nc: NatsConnection) => (nc as unknown as { protocol: { transport: BunTransport } }).protocol.transport;
    const plain = await connectNats({ servers: url() });
    const tls = await connectNats({ servers: serverTls!.url, tls: { caFile: certs!.caFile } });
    try {
      expect(transportOf(plain)).toBeInstanceOf(BunTransport);
      expect(transportOf(plain).isEncrypted()).toBe(false);
      expect(transportOf(tls).isEncrypted()).toBe(true);
      // Both carry requests both ways.
      expect((await plain.rtt()) >= 0).toBe(true);
      expect((await tls.rtt()) >= 0).toBe(true);
    } finally {
      await Promise.allSettled([plain.close(), tls.close()]);
    }
    // The server requires TLS and the client gave no TLS options: the INFO says so, the Node transport takes over
    // (and rejects the test CA's certificate, which the system does not trust).
    const err = await connectNats({ servers: serverTls!.url, timeout: 3000 }).catch((e: Error) => e);
    expect(String(err)).toMatch(/certificate|self.signed|unable to verify/i);
  });

  test("cafile: server-only TLS works for create/get/watch", async () => {
    const s = await NatsStore.connect({ servers: [serverTls!.url], bucket: freshBucket("tls"), cafile: certs!.caFile });
    try {
      await roundTrip(s);
    } finally {
      await s.close();
    }
  });

  test("verify on the server: a client without certfile/keyfile is refused, one with them works", async () => {
    // The server drops the connection after the handshake; nats.js reports that only as a timeout of the first
    // connect, so the error must carry the hint (bounded by connectTimeoutMs, never a hang).
    const err = await NatsStore.connect({
      servers: [mutualTls!.url],
      bucket: freshBucket("mtls"),
      cafile: certs!.caFile,
      connectTimeoutMs: 2000,
    }).catch((e) => e);
    expect(err).toBeInstanceOf(StoreUnavailableError);
    expect(String(err.message)).toContain(mutualTls!.url);
    expect(String(err.message)).toContain("--nats-certfile and --nats-keyfile");
    // Only one of the pair is a usage error, before any connection.
    await expect(NatsStore.connect({ servers: [mutualTls!.url], cafile: certs!.caFile, certfile: certs!.clientCertFile })).rejects.toThrow(
      "both --nats-certfile and --nats-keyfile",
    );
    const s = await NatsStore.connect({
      servers: [mutualTls!.url],
      bucket: freshBucket("mtls"),
      cafile: certs!.caFile,
      certfile: certs!.clientCertFile,
      keyfile: certs!.clientKeyFile,
    });
    try {
      await roundTrip(s);
    } finally {
      await s.close();
    }
  });

  test("without cafile the server certificate is rejected at once with a certificate error", async () => {
    // A long connectTimeoutMs: had the client missed the TLS error, it would fail with "timeout" instead.
    const err = await NatsStore.connect({ servers: [serverTls!.url], bucket: freshBucket("noca"), connectTimeoutMs: 20_000 }).catch(
      (e) => e,
    );
    expect(err).toBeInstanceOf(StoreUnavailableError);
    expect(String(err.message)).toMatch(/certificate/);
    expect(String(err.message)).toContain("--nats-cafile");
    expect(String(err.message)).not.toMatch(/timeout/);
  });

  test("unreadable TLS files name their flag; TLS options against a plain server fail clearly", async () => {
    await expect(NatsStore.connect({ servers: [serverTls!.url], cafile: "/nonexistent/ca.pem" })).rejects.toThrow(
      "cannot read --nats-cafile /nonexistent/ca.pem",
    );
    await expect(
      NatsStore.connect({
        servers: [mutualTls!.url],
        cafile: certs!.caFile,
        certfile: certs!.clientCertFile,
        keyfile: "/nonexistent/c.key",
      }),
    ).rejects.toThrow("cannot read --nats-keyfile /nonexistent/c.key");
    const err = await NatsStore.connect({ servers: [url()], cafile: certs!.caFile, connectTimeoutMs: 20_000 }).catch((e) => e);
    expect(err).toBeInstanceOf(StoreUnavailableError);
    expect(String(err.message)).toContain("server does not support 'tls'");
  });
});
