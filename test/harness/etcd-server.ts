// Starts a throw-away single-member etcd (/usr/bin/etcd) for tests and benchmarks (the lab starts its own, detached:
// src/lab/servers.ts). No bun:test imports here. Processes are only ever stopped by the PID this module started.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type TailedProcess, freePort, retryIfAddressInUse, spawnWithTail, stopGracefully } from "./server-process.ts";
import { endChild } from "../../src/child-stdin.ts";

export interface EtcdServerOptions {
  /** Address to listen on (default 127.0.0.1). Inside a netns, an address of that namespace. */
  host?: string;
  /** Client port (default: a free port). */
  clientPort?: number;
  /** Peer port (default: a free port). */
  peerPort?: number;
  /** Data directory (default: a fresh temp dir, removed by stop()). A given dir is kept by stop(). */
  dataDir?: string;
  /** Run inside `ip netns exec <ns>`. */
  netns?: string;
  /** How long to wait for the server to answer /health (default 15 s). */
  startTimeoutMs?: number;
  /** Path of the etcd binary (default /usr/bin/etcd). */
  etcdPath?: string;
  /**
   * Serve clients over TLS with these PEM files (endpoint becomes https://). With caFile, etcd also requires
   * client certificates signed by it (--client-cert-auth); health checks then present cert/key themselves.
   */
  tls?: { certFile: string; keyFile: string; caFile?: string };
}

export interface EtcdServer {
  /** http://host:clientPort (https:// with tls) */
  endpoint: string;
  /** PID of the process started for etcd (a tiny sh supervisor that takes etcd down with it); changes on restart(). */
  readonly pid: number;
  dataDir: string;
  /** Stops the process (SIGTERM, then SIGKILL) and removes the data dir if this module created it. */
  stop(): Promise<void>;
  /** Stops the process and starts it again on the same ports and data dir. */
  restart(): Promise<void>;
}

const STOP_GRACE_MS = 5000;

// A few lines of sh between us and etcd, so that etcd never outlives the process that started it (a test run
// killed by a timeout or Ctrl-C would otherwise leave etcd servers behind): it stops etcd when its stdin (a pipe
// from us) reaches EOF, and passes SIGTERM/SIGINT on. Its exit status is etcd's.
export const SUPERVISOR = `
exec 3<&0
"$@" </dev/null 3<&- &
pid=$!
trap 'kill -TERM $pid 2>/dev/null' TERM INT
( read _ignored <&3; kill -TERM $pid 2>/dev/null ) </dev/null &
watcher=$!
exec 3<&-
while :; do
  wait $pid; rc=$?
  kill -0 $pid 2>/dev/null || break
done
kill $watcher 2>/dev/null
wait $watcher 2>/dev/null
exit $rc
`;

/** The command line of one etcd member (single or in a cluster). */
export function etcdMemberArgs(m: {
  etcdPath: string;
  name: string;
  dataDir: string;
  client: string;
  peer: string;
  initialCluster: string;
  state: "new" | "existing";
  logLevel: string;
}): string[] {
  return [
    m.etcdPath,
    "--name",
    m.name,
    "--data-dir",
    m.dataDir,
    "--listen-client-urls",
    m.client,
    "--advertise-client-urls",
    m.client,
    "--listen-peer-urls",
    m.peer,
    "--initial-advertise-peer-urls",
    m.peer,
    "--initial-cluster",
    m.initialCluster,
    "--initial-cluster-state",
    m.state,
    "--logger",
    "zap",
    "--log-level",
    m.logLevel,
  ];
}

export async function startEtcdServer(opts: EtcdServerOptions = {}): Promise<EtcdServer> {
  const host = opts.host ?? "127.0.0.1";
  const ownDataDir = opts.dataDir === undefined;
  const dataDir = opts.dataDir ?? (await mkdtemp(join(tmpdir(), "flannel-etcd-")));
  const startTimeoutMs = opts.startTimeoutMs ?? 15000;
  const etcdPath = opts.etcdPath ?? "/usr/bin/etcd";
  const urlHost = host.includes(":") ? `[${host}]` : host;
  const scheme = opts.tls ? "https" : "http";
  const tlsArgs = opts.tls
    ? [
        "--cert-file",
        opts.tls.certFile,
        "--key-file",
        opts.tls.keyFile,
        ...(opts.tls.caFile ? ["--trusted-ca-file", opts.tls.caFile, "--client-cert-auth"] : []),
      ]
    : [];
  const fetchTls = opts.tls
    ? {
        cert: await Bun.file(opts.tls.certFile).text(),
        key: await Bun.file(opts.tls.keyFile).text(),
        ...(opts.tls.caFile ? { ca: await Bun.file(opts.tls.caFile).text() } : { rejectUnauthorized: false }),
      }
    : undefined;

  let clientPort = opts.clientPort ?? freePort();
  let peerPort = opts.peerPort ?? freePort();
  let proc: TailedProcess<"pipe"> | null = null;

  const peerUrl = () => `http://${urlHost}:${peerPort}`;

  function spawnEtcd(): TailedProcess<"pipe"> {
    const client = `${scheme}://${urlHost}:${clientPort}`;
    const peer = peerUrl();
    const args = [
      ...etcdMemberArgs({
        etcdPath,
        name: "default",
        dataDir,
        client,
        peer,
        initialCluster: `default=${peer}`,
        state: "new",
        logLevel: "warn",
      }),
      ...tlsArgs,
    ];
    const supervised = ["sh", "-c", SUPERVISOR, "etcd-supervisor", ...args];
    const cmd = opts.netns ? ["ip", "netns", "exec", opts.netns, ...supervised] : supervised;
    // stdin is a pipe we never write to: it reaches EOF when this process dies, however it dies.
    return spawnWithTail(cmd, { stdin: "pipe" });
  }

  async function healthy(endpoint: string): Promise<boolean> {
    if (opts.netns) {
      const tlsFlags = opts.tls
        ? [
            `--cert=${opts.tls.certFile}`,
            `--key=${opts.tls.keyFile}`,
            ...(opts.tls.caFile ? [`--cacert=${opts.tls.caFile}`] : ["--insecure-skip-tls-verify"]),
          ]
        : [];
      const p = Bun.spawn(
        ["ip", "netns", "exec", opts.netns, "etcdctl", `--endpoints=${endpoint}`, "--dial-timeout=1s", ...tlsFlags, "endpoint", "health"],
        {
          stdout: "ignore",
          stderr: "ignore",
          env: { ...process.env, ETCDCTL_API: "3" },
        },
      );
      return (await p.exited) === 0;
    }
    try {
      const init = { signal: AbortSignal.timeout(1000), ...(fetchTls ? { tls: fetchTls } : {}) };
      const r = await fetch(`${endpoint}/health`, init);
      const body = (await r.json()) as { health?: unknown };
      if (!r.ok || (body.health !== "true" && body.health !== true)) return false;
      // Someone else's etcd may answer on this port (ours then fails to bind): it must be the member with our peer URL.
      const m = await fetch(`${endpoint}/v3/cluster/member/list`, { ...init, method: "POST", body: "{}" });
      const members = ((await m.json()) as { members?: { peerURLs?: string[] }[] }).members ?? [];
      return members.some((mb) => mb.peerURLs?.includes(peerUrl()));
    } catch {
      return false;
    }
  }

  async function launch(): Promise<void> {
    const endpoint = `${scheme}://${urlHost}:${clientPort}`;
    const started = spawnEtcd();
    proc = started;
    let exited = false;
    void started.p.exited.then(() => {
      exited = true;
      void endChild(started.p.stdin);
    });
    const deadline = Date.now() + startTimeoutMs;
    while (Date.now() < deadline) {
      if (exited) {
        throw new Error(`etcd exited with code ${started.p.exitCode} before answering on ${endpoint}:\n${started.tail.join("\n")}`);
      }
      if (await healthy(endpoint)) return;
      await Bun.sleep(50);
    }
    await kill();
    throw new Error(`etcd did not answer /health on ${endpoint} within ${startTimeoutMs} ms:\n${started.tail.join("\n")}`);
  }

  async function kill(): Promise<void> {
    const cur = proc;
    proc = null;
    if (cur) await stopGracefully(cur.p, "etcd", STOP_GRACE_MS);
  }

  const pickedPorts = opts.clientPort === undefined && opts.peerPort === undefined;
  const newPorts = () => {
    clientPort = freePort();
    peerPort = freePort();
  };
  try {
    await retryIfAddressInUse(launch, { newPorts: pickedPorts ? newPorts : undefined });
  } catch (e) {
    if (ownDataDir) await rm(dataDir, { recursive: true, force: true });
    throw e;
  }

  // stop() and restart() run one at a time, in call order: a stop() during a restart() must not leave a
  // relaunched etcd behind or remove the data dir under it.
  let queue: Promise<unknown> = Promise.resolve();
  let stopped = false;
  const serialized = (fn: () => Promise<void>): Promise<void> => {
    const next = queue.then(fn, fn);
    queue = next.catch(() => {});
    return next;
  };

  const server: EtcdServer = {
    endpoint: `${scheme}://${urlHost}:${clientPort}`,
    get pid() {
      return proc?.p.pid ?? -1;
    },
    dataDir,
    stop: () =>
      serialized(async () => {
        stopped = true;
        await kill();
        if (ownDataDir) await rm(dataDir, { recursive: true, force: true });
      }),
    restart: () =>
      serialized(async () => {
        if (stopped) throw new Error("etcd server was stopped; cannot restart");
        await kill();
        await launch();
      }),
  };
  return server;
}
