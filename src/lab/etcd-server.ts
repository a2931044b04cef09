// Starts a throw-away single-member etcd (/usr/bin/etcd) for tests and for the lab. No bun:test imports here:
// the lab (production code) uses it too. Processes are only ever stopped by the PID this module started.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { consola } from "consola";

const log = consola.withTag("etcd-server");

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
}

export interface EtcdServer {
  /** http://host:clientPort */
  endpoint: string;
  /** PID of the running etcd (changes after restart()). */
  readonly pid: number;
  dataDir: string;
  /** Stops the process (SIGTERM, then SIGKILL) and removes the data dir if this module created it. */
  stop(): Promise<void>;
  /** Stops the process and starts it again on the same ports and data dir. */
  restart(): Promise<void>;
}

const STOP_GRACE_MS = 5000;
const STDERR_TAIL_LINES = 40;

/** A port that was free a moment ago on 127.0.0.1 (bind to port 0, read it, close). */
export function freePort(): number {
  const sock = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = sock.port;
  sock.stop(true);
  return port;
}

export async function startEtcdServer(opts: EtcdServerOptions = {}): Promise<EtcdServer> {
  const host = opts.host ?? "127.0.0.1";
  const ownDataDir = opts.dataDir === undefined;
  const dataDir = opts.dataDir ?? (await mkdtemp(join(tmpdir(), "flannel-etcd-")));
  const startTimeoutMs = opts.startTimeoutMs ?? 15000;
  const etcdPath = opts.etcdPath ?? "/usr/bin/etcd";
  const urlHost = host.includes(":") ? `[${host}]` : host;

  let clientPort = opts.clientPort ?? freePort();
  let peerPort = opts.peerPort ?? freePort();
  let proc: ReturnType<typeof spawnEtcd> | null = null;

  function spawnEtcd() {
    const client = `http://${urlHost}:${clientPort}`;
    const peer = `http://${urlHost}:${peerPort}`;
    const args = [
      etcdPath,
      "--name", "default",
      "--data-dir", dataDir,
      "--listen-client-urls", client,
      "--advertise-client-urls", client,
      "--listen-peer-urls", peer,
      "--initial-advertise-peer-urls", peer,
      "--initial-cluster", `default=${peer}`,
      "--initial-cluster-state", "new",
      "--logger", "zap",
      "--log-level", "warn",
    ];
    const cmd = opts.netns ? ["ip", "netns", "exec", opts.netns, ...args] : args;
    const p = Bun.spawn(cmd, { stdin: "ignore", stdout: "ignore", stderr: "pipe" });
    // Keep draining stderr (a full pipe would block etcd) and remember its tail for error messages.
    const tail: string[] = [];
    void (async () => {
      const dec = new TextDecoder();
      let buf = "";
      try {
        for await (const chunk of p.stderr as ReadableStream<Uint8Array>) {
          buf += dec.decode(chunk, { stream: true });
          const lines = buf.split("\n");
          buf = lines.pop() ?? "";
          for (const l of lines) {
            tail.push(l);
            if (tail.length > STDERR_TAIL_LINES) tail.shift();
          }
        }
      } catch {
        /* process gone */
      }
    })();
    return { p, tail };
  }

  async function healthy(endpoint: string): Promise<boolean> {
    if (opts.netns) {
      const p = Bun.spawn(["ip", "netns", "exec", opts.netns, "etcdctl", `--endpoints=${endpoint}`, "--dial-timeout=1s", "endpoint", "health"], {
        stdout: "ignore",
        stderr: "ignore",
        env: { ...process.env, ETCDCTL_API: "3" },
      });
      return (await p.exited) === 0;
    }
    try {
      const r = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
      const body = (await r.json()) as { health?: unknown };
      return r.ok && (body.health === "true" || body.health === true);
    } catch {
      return false;
    }
  }

  async function launch(): Promise<void> {
    const endpoint = `http://${urlHost}:${clientPort}`;
    const started = spawnEtcd();
    proc = started;
    let exited = false;
    void started.p.exited.then(() => (exited = true));
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
    if (!cur || cur.p.exitCode !== null || cur.p.signalCode !== null) return;
    cur.p.kill("SIGTERM");
    const done = await Promise.race([cur.p.exited.then(() => true), Bun.sleep(STOP_GRACE_MS).then(() => false)]);
    if (!done) {
      log.warn(`etcd pid ${cur.p.pid} ignored SIGTERM for ${STOP_GRACE_MS} ms; sending SIGKILL`);
      cur.p.kill("SIGKILL");
      await cur.p.exited;
    }
  }

  // Ports we picked ourselves can be taken by someone else between the check and etcd's bind: retry with new ones.
  const pickedPorts = opts.clientPort === undefined && opts.peerPort === undefined;
  for (let attempt = 1; ; attempt++) {
    try {
      await launch();
      break;
    } catch (e) {
      const inUse = /address already in use/i.test(String((e as Error).message));
      if (pickedPorts && inUse && attempt < 3) {
        clientPort = freePort();
        peerPort = freePort();
        continue;
      }
      if (ownDataDir) await rm(dataDir, { recursive: true, force: true });
      throw e;
    }
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
    endpoint: `http://${urlHost}:${clientPort}`,
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
