// The lab's store: one SQLite file shared by every host, a server of the user's (--store-args), or an etcd /
// nats-server started in the underlay namespace; then the network config is put into it.
import { logger } from "../log.ts";
import { join } from "node:path";
import { execIn, waitFor } from "./netns.ts";
import { type LabServer, startLabServer } from "./servers.ts";
import { type LabState, recordPath, saveState } from "./state.ts";
import { UNDERLAY_GATEWAY } from "./topology.ts";

const log = logger("lab");

export interface LabStoreOptions {
  /** Store flags for a server the user runs. */
  storeArgs?: string[];
  /** etcd key prefix for the lab's own etcd (default flannel's /coreos.com/network). */
  etcdPrefix?: string;
  /** nats-server binary for the lab's own server (default: nats-server on PATH). */
  natsServer?: string;
}

/** Sets s.storeFlags: the flags every agent and `config put` get. */
export async function setupStore(s: LabState, { storeArgs, etcdPrefix, natsServer }: LabStoreOptions = {}): Promise<void> {
  if (storeArgs && storeArgs.length > 0) {
    s.storeFlags = ["--store", s.store, ...storeArgs];
  } else if (s.store === "sqlite") {
    // One file shared by all hosts: the namespaces share the file system.
    const db = join(s.stateDir, "flannel.db");
    for (const p of [db, `${db}-wal`, `${db}-shm`, `${db}-journal`]) recordPath(s, p);
    s.storeFlags = ["--store", "sqlite", "--sqlite-path", db];
  } else {
    const kind = s.store;
    const onPid = (srv: LabServer) => {
      s.servers.push(srv);
      recordPath(s, srv.dataDir);
      recordPath(s, srv.logFile);
      saveState(s);
    };
    const server = await startLabServer(kind, s.underlay, UNDERLAY_GATEWAY, s.stateDir, onPid, { natsServer });
    s.storeFlags = kind === "etcd" && etcdPrefix ? [...server.storeFlags, "--etcd-prefix", etcdPrefix] : server.storeFlags;
    log.info(`${kind} server pid ${server.pid} in ${s.underlay}: ${server.storeFlags.join(" ")}`);
  }
  saveState(s);
}

export async function putNetworkConfig(s: LabState, backendOptions: Record<string, unknown> = {}): Promise<void> {
  const config = JSON.stringify({ Network: s.network, Backend: { Type: s.backend, ...backendOptions } });
  // From inside the underlay so a server listening on 192.0.2.1 is reachable. A fresh server may need a moment.
  await waitFor(
    `\`config put\` to succeed`,
    15_000,
    async () => {
      await execIn(s.underlay, [s.binary, "config", "put", config, ...s.storeFlags], { timeoutMs: 10_000 });
      return true;
    },
    500,
  );
}
