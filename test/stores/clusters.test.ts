// The distributed stores as users run them: a 3-member etcd and a 3-server NATS JetStream cluster with an R3 bucket
// (servers on loopback, started and stopped by PID here). The conformance suite runs against both; then the faults
// of issue 11: a hung (SIGSTOP) or killed member or server, and quorum loss, seen through the peer watch.

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { encodeLeaseAttrs } from "../../src/lease.ts";
import { type PeerEvent, watchPeers } from "../../src/peer-watch.ts";
import type { Store } from "../../src/store.ts";
import { StoreHealth } from "../../src/store-health.ts";
import { EtcdStore } from "../../stores/etcd/store.ts";
import { NatsStore } from "../../stores/nats/store.ts";
import { type EtcdCluster, startEtcdCluster } from "../harness/etcd-cluster.ts";
import { type NatsCluster, startNatsCluster } from "../harness/nats-cluster.ts";
import { peerBinary } from "../helpers/peers.ts";
import { runStoreConformance } from "./conformance.ts";

setDefaultTimeout(90_000);

let etcd: EtcdCluster | null = null;
let nats: NatsCluster | null = null;
beforeAll(async () => {
  // The NATS cluster runs a current nats-server: 2.9 refuses a replicated bucket (no compare-and-set across replicas).
  [etcd, nats] = await Promise.all([startEtcdCluster(), startNatsCluster({ binary: peerBinary("nats-server") })]);
}, 60_000);
afterAll(async () => {
  await Promise.allSettled([etcd?.stop(), nats?.stop()]);
});
const ec = (): EtcdCluster =>
  etcd ??
  (() => {
    throw new Error("etcd cluster did not start");
  })();
const nc = (): NatsCluster =>
  nats ??
  (() => {
    throw new Error("NATS cluster did not start");
  })();

const val = (ip: string) => encodeLeaseAttrs({ publicIP: ip, publicIPv6: null, backendType: "host-gw" });
const OWN = "subnets/10.5.1.0-24";
let netCounter = 0;

/** Follows watchPeers in the background; `seen(key)` resolves when the peer is added. */
function follow(store: Store, health: StoreHealth) {
  const ac = new AbortController();
  const events: PeerEvent[] = [];
  const done = (async () => {
    try {
      for await (const ev of watchPeers(store, () => OWN, ac.signal, undefined, { health })) events.push(ev);
    } catch (e) {
      if (!ac.signal.aborted) throw e;
    }
  })();
  return {
    events,
    async added(key: string, withinMs: number): Promise<number> {
      const t0 = Date.now();
      while (!events.some((e) => e.type === "added" && e.key === key)) {
        if (Date.now() - t0 > withinMs) throw new Error(`${key} was not added within ${withinMs} ms`);
        await Bun.sleep(20);
      }
      return Date.now() - t0;
    },
    async synced(): Promise<void> {
      const t0 = Date.now();
      while (!events.some((e) => e.type === "synced")) {
        if (Date.now() - t0 > 20_000) throw new Error("no initial sync within 20 s");
        await Bun.sleep(20);
      }
    },
    removed: () => events.filter((e) => e.type === "removed"),
    async stop() {
      ac.abort();
      await Promise.race([done, Bun.sleep(5000)]);
    },
  };
}

/** Writes a lease through `writer`, retrying while the cluster elects (bounded). */
async function writeLease(writer: Store, key: string, ip: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      if ((await writer.create(key, val(ip), { ttlMs: 120_000 })) !== null) return;
      throw new Error(`${key} exists`);
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await Bun.sleep(200);
    }
  }
}

// ---- etcd ----

const CONF_PREFIX = `/conformance-cluster-${process.pid}`;
runStoreConformance("etcd, 3 members", {
  open: () => EtcdStore.connect({ endpoints: ec().endpoints, prefix: CONF_PREFIX }),
});

describe("etcd, 3 members, faults", () => {
  /** A store on its own prefix with `first` as the endpoint the watch starts on. */
  async function storesOn(first: number): Promise<{ watcher: Store; writer: Store; close(): Promise<void> }> {
    const prefix = `/fault-${process.pid}-${++netCounter}`;
    const eps = ec().endpoints;
    const ordered = [eps[first]!, ...eps.filter((_, i) => i !== first)];
    const watcher = await EtcdStore.connect({ endpoints: ordered, prefix, requestTimeoutMs: 2000 });
    const writer = await EtcdStore.connect({ endpoints: eps.filter((_, i) => i !== first), prefix });
    return { watcher, writer, close: async () => void (await Promise.allSettled([watcher.close(), writer.close()])) };
  }

  test("SIGSTOP the member the watch is on: a lease written through the majority arrives within 15 s", async () => {
    const { watcher, writer, close } = await storesOn(0);
    const f = follow(watcher, new StoreHealth());
    const victim = ec().members[0]!;
    try {
      await f.synced();
      await writeLease(writer, "subnets/10.5.2.0-24", "192.0.2.2");
      await f.added("subnets/10.5.2.0-24", 5000);
      victim.pause();
      await writeLease(writer, "subnets/10.5.3.0-24", "192.0.2.3");
      const ms = await f.added("subnets/10.5.3.0-24", 15_000);
      console.log(`etcd member SIGSTOPped: new lease seen after ${ms} ms`);
      expect(f.removed()).toEqual([]);
    } finally {
      victim.resume();
      await f.stop();
      await close();
    }
  });

  test("kill the member the watch is on: a new lease arrives within 2 s", async () => {
    const { watcher, writer, close } = await storesOn(1);
    const f = follow(watcher, new StoreHealth());
    const victim = ec().members[1]!;
    try {
      await f.synced();
      await writeLease(writer, "subnets/10.5.2.0-24", "192.0.2.2");
      await f.added("subnets/10.5.2.0-24", 5000);
      await victim.kill();
      await writeLease(writer, "subnets/10.5.3.0-24", "192.0.2.3");
      const ms = await f.added("subnets/10.5.3.0-24", 2000);
      console.log(`etcd member killed: new lease seen after ${ms} ms`);
    } finally {
      await victim.start().catch(() => {});
      await f.stop();
      await close();
    }
  });

  test("quorum lost for 30 s: no peer is removed, the store says it is unreachable, and it converges after", async () => {
    const { watcher, writer, close } = await storesOn(0);
    const health = new StoreHealth();
    const f = follow(watcher, health);
    const [a, b] = [ec().members[1]!, ec().members[2]!];
    try {
      await f.synced();
      await writeLease(writer, "subnets/10.5.2.0-24", "192.0.2.2");
      await f.added("subnets/10.5.2.0-24", 5000);
      a.pause();
      b.pause();
      const t0 = Date.now();
      while (health.up && Date.now() - t0 < 20_000) await Bun.sleep(100);
      expect(health.up).toBe(false);
      await Bun.sleep(Math.max(0, 30_000 - (Date.now() - t0)));
      expect(f.removed()).toEqual([]);
      a.resume();
      b.resume();
      await writeLease(writer, "subnets/10.5.3.0-24", "192.0.2.3");
      await f.added("subnets/10.5.3.0-24", 15_000);
      const t1 = Date.now();
      while (!health.up && Date.now() - t1 < 15_000) await Bun.sleep(100);
      expect(health.up).toBe(true);
      expect(f.removed()).toEqual([]);
    } finally {
      a.resume();
      b.resume();
      await f.stop();
      await close();
    }
  });
});

// ---- NATS ----

const R3_BUCKET = `conformance-r3-${process.pid}`;
runStoreConformance("nats, 3 servers, R3 bucket", {
  open: () => NatsStore.connect({ servers: nc().urls, bucket: R3_BUCKET, replicas: 3 }),
});

describe("nats, 3 servers, R3 bucket: lists answered by any replica", () => {
  test("every list, from a client on each server while another writes, is the exact state at its revision, and a watch from it misses nothing", async () => {
    const bucket = `direct-r3-${process.pid}`;
    const writer = await NatsStore.connect({ servers: [nc().urls[0]!], bucket, replicas: 3 });
    const listers = await Promise.all(nc().urls.map((u) => NatsStore.connect({ servers: [u], bucket, replicas: 3 })));
    let consumers = 0; // lists that fell back to a consumer (the watch below makes its own, after the count)
    for (const l of listers) {
      // biome-ignore lint/suspicious/noExplicitAny: the store's bucket handle, looked at from its own test
      const js = (l as any).b.js.consumers;
      const real = js.getPushConsumer.bind(js);
      js.getPushConsumer = (...a: unknown[]) => (consumers++, real(...a));
    }
    const enc = new TextEncoder();
    // Every write to the bucket, by revision (the writer is the only one).
    const log = new Map<number, { key: string }>();
    const cur = new Map<string, number>();
    let writing = true;
    const writes = (async () => {
      for (let i = 0; i < 400 && writing; i++) {
        const key = `subnets/10.9.${i % 40}.0-24`;
        const had = cur.get(key);
        const rev = had === undefined ? await writer.create(key, enc.encode(`v${i}`)) : await writer.update(key, enc.encode(`v${i}`), had);
        if (rev === null) throw new Error(`write ${i} to ${key} lost a race with nobody`);
        log.set(rev, { key });
        cur.set(key, rev);
      }
    })();
    const lists: { items: { key: string; revision: number }[]; revision: number; at: number }[] = [];
    try {
      await Promise.all(
        listers.map(async (l, n) => {
          for (let j = 0; j < 25; j++) {
            const r = await l.list("subnets/");
            lists.push({ items: r.items.map((kv) => ({ key: kv.key, revision: kv.revision })), revision: r.revision, at: n });
          }
        }),
      );
      writing = false;
      await writes;
      // biome-ignore lint/suspicious/noExplicitAny: the store's bucket handle, looked at from its own test
      expect(listers.every((l) => (l as any).b.directBatch)).toBe(true);
      console.log(`${lists.length} lists on an R3 bucket during 400 writes: ${consumers} through a consumer, the rest direct`);
      expect(consumers).toBeLessThan(lists.length / 2);
      for (const l of lists) {
        const want = new Map<string, number>();
        for (const [rev, w] of log) if (rev <= l.revision) want.set(w.key, Math.max(rev, want.get(w.key) ?? 0));
        expect(new Map(l.items.map((kv) => [kv.key, kv.revision]))).toEqual(want);
      }
      // A watch from the oldest list's revision, on the server it came from, delivers every later write.
      const oldest = lists.reduce((a, b) => (b.revision < a.revision ? b : a));
      const seen = new Set<number>();
      const ctl = new AbortController();
      const last = Math.max(...log.keys());
      const watching = (async () => {
        for await (const ev of listers[oldest.at]!.watch("subnets/", oldest.revision, ctl.signal)) {
          if (ev.type === "put") seen.add(ev.kv.revision);
          if (seen.has(last)) break;
        }
      })();
      await Promise.race([watching, Bun.sleep(15_000)]);
      ctl.abort();
      expect([...log.keys()].filter((r) => r > oldest.revision && !seen.has(r))).toEqual([]);
    } finally {
      writing = false;
      await writes.catch(() => {});
      await Promise.allSettled([writer.close(), ...listers.map((l) => l.close())]);
    }
  });
});

describe("nats, 3 servers, R3 bucket, faults", () => {
  async function streamLeader(bucket: string): Promise<string> {
    const c = await connect({ servers: nc().urls, maxReconnectAttempts: 5 });
    try {
      const deadline = Date.now() + 20_000;
      for (;;) {
        try {
          const info = await (await jetstreamManager(c)).streams.info(`KV_${bucket}`);
          if (info.cluster?.leader) return info.cluster.leader;
        } catch {
          /* electing */
        }
        if (Date.now() > deadline) throw new Error(`no stream leader for KV_${bucket}`);
        await Bun.sleep(200);
      }
    } finally {
      await c.close();
    }
  }

  test("--nats-replicas 3 makes an R3 bucket; kill the stream leader, then a non-leader: a new peer arrives within 15 s each time", async () => {
    const bucket = `fault-r3-${process.pid}`;
    const watcher = await NatsStore.connect({ servers: nc().urls, bucket, replicas: 3 });
    const writer = await NatsStore.connect({ servers: [...nc().urls].reverse(), bucket, replicas: 3 });
    const f = follow(watcher, new StoreHealth());
    const killed: string[] = [];
    try {
      const c = await connect({ servers: nc().urls });
      const info = await (await jetstreamManager(c)).streams.info(`KV_${bucket}`);
      await c.close();
      expect(info.config.num_replicas).toBe(3);
      await f.synced();
      await writeLease(writer, "subnets/10.5.2.0-24", "192.0.2.2");
      await f.added("subnets/10.5.2.0-24", 5000);

      const leader = await streamLeader(bucket);
      await nc().byName(leader).kill();
      killed.push(leader);
      await writeLease(writer, "subnets/10.5.3.0-24", "192.0.2.3");
      const ms1 = await f.added("subnets/10.5.3.0-24", 15_000);

      await nc().byName(leader).start();
      killed.pop();
      const newLeader = await streamLeader(bucket);
      const other = nc().servers.find((s) => s.name !== newLeader)!;
      await other.kill();
      killed.push(other.name);
      await writeLease(writer, "subnets/10.5.4.0-24", "192.0.2.4");
      const ms2 = await f.added("subnets/10.5.4.0-24", 15_000);
      console.log(`NATS stream leader ${leader} killed: new peer after ${ms1} ms; non-leader ${other.name} killed: after ${ms2} ms`);
      expect(f.removed()).toEqual([]);
    } finally {
      for (const name of killed)
        await nc()
          .byName(name)
          .start()
          .catch(() => {});
      await f.stop();
      await Promise.allSettled([watcher.close(), writer.close()]);
    }
  });
});
