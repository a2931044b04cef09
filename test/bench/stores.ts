// Store benchmark: `bun test/bench/stores.ts [sqlite,etcd,nats]` as root.
//
// Per store: (a) 200 concurrent lease acquisitions (200 store clients, distinct public IPs): time until all are held,
// duplicate subnets (must be 0, also checked in a final list()); (b) the delay from a peer lease written to the store
// until a real agent (dist/flannel-bin run, host-gw) has programmed its route, over 200 peers: p50, p99, max.
// Goals (printed, not asserted): route p99 <= 200 ms on etcd and NATS, <= 300 ms on SQLite. Exit 1 on any duplicate
// or a failed measurement.
// NATS runs twice: "nats" on the current nats-server scripts/setup.sh builds (lists in one batched direct get), and
// "nats-2.9" on Debian's /usr/sbin/nats-server 2.9.10 (lists through a consumer). `bun test/bench/stores.ts nats`
// runs only the first.
//
// Everything stays in one namespace this script makes (bench-netns.ts).
import { consola } from "../../src/log.ts";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startEtcdServer } from "../harness/etcd-server.ts";
import { startNatsServer } from "../harness/nats-server.ts";
import { peerBinary } from "../helpers/peers.ts";
import type { Store } from "../../src/store.ts";
import { EtcdStore } from "../../stores/etcd/store.ts";
import { NatsStore } from "../../stores/nats/store.ts";
import { SqliteStore } from "../../stores/sqlite.ts";
import { ensureBinary } from "../helpers/agents.ts";
import { runInBenchNamespace } from "./bench-netns.ts";
import { type AcquireResult, type RouteDelayResult, measureAcquisitions, measureRouteDelay } from "./stores-measure.ts";

type Kind = "sqlite" | "etcd" | "nats" | "nats-2.9";
const ALL: Kind[] = ["sqlite", "etcd", "nats", "nats-2.9"];
const CLIENTS = 200;
const PEERS = 200;
const SPACING_MS = 20;
const GOAL_P99_MS: Record<Kind, number> = { sqlite: 300, etcd: 200, nats: 200, "nats-2.9": 200 };
const INNER_TIMEOUT_MS = 170_000;

function parseKinds(arg: string | undefined): Kind[] {
  if (!arg) return ALL;
  const ks = arg.split(",");
  for (const k of ks) if (!ALL.includes(k as Kind)) throw new Error(`unknown store ${JSON.stringify(k)} (use ${ALL.join(",")})`);
  return ks as Kind[];
}

// ---------------------------------------------------------------------------------------------------------------
// Outer: namespace lifecycle

async function outer(args: string[]): Promise<number> {
  parseKinds(args[0]); // fail before making anything
  return runInBenchNamespace(import.meta.path, ensureBinary(), args, INNER_TIMEOUT_MS);
}

// ---------------------------------------------------------------------------------------------------------------
// Inner: per store, servers up, (a), (b), servers down

interface StoreRow {
  kind: Kind;
  clientsNote: string;
  acquire: AcquireResult | null;
  route: RouteDelayResult | null;
  error: string | null;
}

interface Harness {
  flags: string[];
  note: string;
  acquireClients(n: number): Promise<Store[]>;
  routeClient(): Promise<Store>;
  stop(): Promise<void>;
}

/** Opens n clients, `batch` at a time (connection setup is not part of the measurement). */
async function openMany(n: number, batch: number, open: () => Promise<Store>): Promise<Store[]> {
  const out: Store[] = [];
  for (let i = 0; i < n; i += batch) out.push(...(await Promise.all(Array.from({ length: Math.min(batch, n - i) }, open))));
  return out;
}

async function harness(kind: Kind, dir: string): Promise<Harness> {
  switch (kind) {
    case "sqlite": {
      const acq = join(dir, "acquire.db");
      const db = join(dir, "route.db");
      return {
        flags: ["--store", "sqlite", "--sqlite-path", db],
        note: "200 SqliteStore handles on one file, one process (bun:sqlite is synchronous: the calls interleave at awaits)",
        acquireClients: (n) => openMany(n, 50, async () => SqliteStore.open(acq)),
        routeClient: async () => SqliteStore.open(db), // a handle of its own: it polls, as the agent's does
        stop: async () => {},
      };
    }
    case "etcd": {
      const srv = await startEtcdServer();
      return {
        flags: ["--store", "etcd", "--etcd-endpoints", srv.endpoint],
        note: "200 EtcdStore clients (HTTP to the v3 gateway of one etcd)",
        acquireClients: (n) => openMany(n, 50, () => EtcdStore.connect({ endpoints: [srv.endpoint], prefix: "/bench-acquire" })),
        routeClient: () => EtcdStore.connect({ endpoints: [srv.endpoint], prefix: "/coreos.com/network" }),
        stop: () => srv.stop(),
      };
    }
    case "nats":
    case "nats-2.9": {
      const srv = await startNatsServer(kind === "nats" ? { natsServerPath: peerBinary("nats-server") } : {});
      // The first connect creates the bucket; the rest then only bind to it.
      const acquireOpen = () => NatsStore.connect({ servers: [srv.url], bucket: "bench-acquire" });
      return {
        flags: ["--store", "nats", "--nats-url", srv.url],
        note: `200 NatsStore clients (200 NATS connections to one JetStream server, nats-server ${kind === "nats" ? "from scripts/setup.sh" : "2.9.10 (Debian)"})`,
        acquireClients: async (n) => {
          const first = await acquireOpen();
          return [first, ...(await openMany(n - 1, 25, acquireOpen))];
        },
        routeClient: () => NatsStore.connect({ servers: [srv.url], bucket: "flannel" }),
        stop: () => srv.stop(),
      };
    }
  }
}

async function closeAll(stores: Store[]): Promise<void> {
  await Promise.all(stores.map((s) => s.close().catch(() => {})));
}

async function benchStore(kind: Kind, dir: string, binary: string): Promise<StoreRow> {
  const row: StoreRow = { kind, clientsNote: "", acquire: null, route: null, error: null };
  let h: Harness | null = null;
  try {
    h = await harness(kind, dir);
    row.clientsNote = h.note;
    console.error(`[${kind}] (a) opening ${CLIENTS} clients, then ${CLIENTS} concurrent acquisitions`);
    const clients = await h.acquireClients(CLIENTS + 1);
    try {
      row.acquire = await measureAcquisitions(clients.slice(0, CLIENTS), clients[CLIENTS]!);
    } finally {
      await closeAll(clients);
    }
    console.error(`[${kind}] (b) agent + ${PEERS} peer leases, ${SPACING_MS} ms apart`);
    const writer = await h.routeClient();
    const watcher = await h.routeClient();
    try {
      row.route = await measureRouteDelay({
        dir,
        binary,
        storeFlags: h.flags,
        label: kind,
        writer,
        watcher,
        peers: PEERS,
        spacingMs: SPACING_MS,
      });
    } finally {
      await closeAll([writer, watcher]);
    }
  } catch (e) {
    row.error = (e as Error).message;
  } finally {
    await h?.stop().catch((e: Error) => console.error(`[${kind}] stopping the server: ${e.message}`));
  }
  return row;
}

const ms = (x: number | undefined) => (x === undefined || Number.isNaN(x) ? "-" : `${x.toFixed(1)} ms`);

function table(header: string[], rows: string[][]): string {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(w[i]!)).join(" | ")} |`;
  return [line(header), `|${w.map((n) => "-".repeat(n + 2)).join("|")}|`, ...rows.map(line)].join("\n");
}

function report(rows: StoreRow[]): string {
  const main = rows.map((r) => {
    const a = r.acquire;
    const d = r.route?.route;
    const goal = GOAL_P99_MS[r.kind];
    const met = d && d.missing === 0 && !Number.isNaN(d.p99) ? (d.p99 <= goal ? "yes" : "NO") : "n/a";
    return [
      r.kind,
      a ? `${ms(a.ms)}, ${a.held}/${a.clients} held, ${a.duplicates} dup` : "failed",
      ms(d?.p50),
      ms(d?.p99),
      ms(d?.max),
      `p99 <= ${goal} ms`,
      met,
    ];
  });
  const detail = rows.map((r) => {
    const x = r.route;
    return [
      r.kind,
      x ? `${x.route.n}/${x.route.n + x.route.missing}` : "-",
      x ? `${ms(x.write.p50)} / ${ms(x.write.p99)}` : "-",
      x ? `${ms(x.watch.p50)} / ${ms(x.watch.p99)}` : "-",
      r.acquire
        ? `list() ${ms(r.acquire.listMs)}, ${r.acquire.creates} creates (max ${r.acquire.maxCreates}/client), ${r.acquire.failed} failed, ${r.acquire.listMismatches} list mismatches`
        : "-",
    ];
  });
  const out = [
    table(["store", `${CLIENTS} acquisitions: time, duplicates`, "route delay p50", "p99", "max", "goal", "met?"], main),
    "",
    table(["store", "routes seen", "create() p50 / p99", "store watch delivery p50 / p99", "acquire checks"], detail),
    "",
    ...rows.map((r) => `${r.kind}: ${r.clientsNote}`),
  ];
  for (const r of rows) {
    if (r.error) out.push(`${r.kind}: ERROR ${r.error}`);
    if (r.route) {
      const w = r.route.worst.map((e) => `#${e.i} @${e.at.toFixed(0)}ms route ${ms(e.route)} (watch ${ms(e.watch)})`);
      out.push(`${r.kind}: slowest routes: ${w.join("; ")}`);
    }
    if (r.acquire?.firstError) out.push(`${r.kind}: first acquisition error: ${r.acquire.firstError}`);
  }
  return out.join("\n");
}

async function inner(binary: string, args: string[]): Promise<number> {
  const kinds = parseKinds(args[0]);
  consola.level = 1; // warnings and errors only: 200 "acquired lease" lines per store would bury the table
  const dir = mkdtempSync(join(tmpdir(), "fbb-"));
  const stop = new AbortController();
  process.on("SIGTERM", () => stop.abort());
  process.on("SIGINT", () => stop.abort());
  const rows: StoreRow[] = [];
  const t0 = performance.now();
  try {
    for (const k of kinds) {
      if (stop.signal.aborted) break;
      rows.push(await benchStore(k, dir, binary));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  console.log(report(rows));
  console.log(`\ntotal ${((performance.now() - t0) / 1000).toFixed(1)} s${stop.signal.aborted ? " (interrupted)" : ""}`);
  const dup = rows.some((r) => (r.acquire?.duplicates ?? 0) > 0);
  const broken = rows.some((r) => r.error || !r.acquire || r.acquire.failed > 0 || r.acquire.listMismatches > 0) || stop.signal.aborted;
  if (dup) console.log("FAIL: duplicate subnets");
  return dup || broken ? 1 : 0;
}

const argv = process.argv.slice(2);
const run = argv[0] === "--inner" ? inner(argv[1]!, argv.slice(2)) : outer(argv);
run.then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  },
);
