// Opens the store named by --store with its flags. The one place that knows every store implementation.
// Stores are imported on use: the NATS client is not loaded by an agent on SQLite (the bundler still embeds all).

import { existsSync } from "node:fs";
import type { FlagValue } from "./flags.ts";
import type { Store } from "./store.ts";
import { type StoreHealth, storeHealth } from "./store-health.ts";

const str = (v: FlagValue): string | undefined => (typeof v === "string" && v !== "" ? v : undefined);
const list = (v: FlagValue): string[] =>
  String(v ?? "")
    .split(",")
    .filter((x) => x !== "");

/**
 * `existing`: only an existing SQLite database is opened (commands that read must not create an empty one at a
 * mistyped path; the agent and `config put` create it).
 */
export async function openStore(f: Record<string, FlagValue>, opts: { existing?: boolean } = {}): Promise<Store> {
  const s = await openStoreOf(f, opts).catch((e) => {
    storeHealth.error();
    throw e;
  });
  return countingFailures(s, storeHealth);
}

async function openStoreOf(f: Record<string, FlagValue>, opts: { existing?: boolean }): Promise<Store> {
  switch (f.store) {
    case "etcd": {
      const { EtcdStore } = await import("../stores/etcd/store.ts");
      return EtcdStore.connect({
        endpoints: list(f["etcd-endpoints"]),
        prefix: str(f["etcd-prefix"]) ?? "/coreos.com/network",
        cafile: str(f["etcd-cafile"]),
        certfile: str(f["etcd-certfile"]),
        keyfile: str(f["etcd-keyfile"]),
        username: str(f["etcd-username"]),
        password: str(f["etcd-password"]),
      });
    }
    case "nats": {
      const { NatsStore } = await import("../stores/nats/store.ts");
      return NatsStore.connect({
        servers: list(f["nats-url"]),
        bucket: str(f["nats-bucket"]) ?? "flannel",
        replicas: typeof f["nats-replicas"] === "number" ? f["nats-replicas"] : undefined,
        user: str(f["nats-user"]),
        password: str(f["nats-password"]),
        token: str(f["nats-token"]),
        credsFile: str(f["nats-creds"]),
        cafile: str(f["nats-cafile"]),
        certfile: str(f["nats-certfile"]),
        keyfile: str(f["nats-keyfile"]),
      });
    }
    default: {
      const path = str(f["sqlite-path"]) ?? "/var/lib/flannel-bin/flannel.db";
      if (opts.existing && !existsSync(path)) throw new Error(`no SQLite database at ${path} (check --sqlite-path)`);
      const { SqliteStore } = await import("../stores/sqlite.ts");
      return SqliteStore.open(path);
    }
  }
}

/** The exact command an operator runs to create the network config in the store in use. */
export function configPutHint(f: Record<string, FlagValue>, example: string): string {
  const ours = `flannel-bin config put '${example}'${f.store && f.store !== "sqlite" ? ` --store ${f.store}` : ""}`;
  if (f.store === "etcd") {
    const prefix = (str(f["etcd-prefix"]) ?? "/coreos.com/network").replace(/\/+$/, "");
    return `ETCDCTL_API=3 etcdctl --endpoints=${list(f["etcd-endpoints"]).join(",")} put ${prefix}/config '${example}'  (or: ${ours})`;
  }
  return ours;
}

/** The store with every failed operation counted in `health` (flannel_bin_store_errors_total). */
export function countingFailures(s: Store, health: StoreHealth): Store {
  const counted = <T>(p: Promise<T>): Promise<T> =>
    p.catch((e) => {
      health.error();
      throw e;
    });
  return {
    kind: s.kind,
    location: s.location,
    get: (key) => counted(s.get(key)),
    list: (prefix, o) => counted(s.list(prefix, o)),
    create: (key, value, o) => counted(s.create(key, value, o)),
    update: (key, value, revision, o) => counted(s.update(key, value, revision, o)),
    delete: (key, revision) => counted(s.delete(key, revision)),
    watch: (prefix, after, signal, o) => s.watch(prefix, after, signal, o), // breaks are counted by the store and the supervisor
    currentRevision: (prefix) => s.currentRevision(prefix), // counted by the supervisor that calls it
    close: () => s.close(),
  };
}
