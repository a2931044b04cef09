// Store servers for the lab: etcd or nats-server started DETACHED inside the underlay namespace, logging to a file.
// Why not the tests' startEtcdServer/startNatsServer (test/harness/etcd-server.ts, nats-server.ts)? Those keep the
// server tied to the process that started it (stderr piped into it; stop() only from that process). `flannel-bin lab
// up` exits and `lab down` runs as another process, so the lab needs a server that outlives `up` and is stopped by
// recorded PID.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { GiveUp, execIn, processAlive, spawnDetachedIn, waitFor } from "./netns.ts";

export interface LabServer {
  kind: "etcd" | "nats";
  pid: number;
  /** Data directory (etcd data-dir / NATS JetStream store dir); also what stopProcess matches in argv. */
  dataDir: string;
  logFile: string;
  /** Store flags for the agent and `config put`. */
  storeFlags: string[];
  /** The nats-server binary, when not the one on PATH (a restart uses it again). */
  natsServer?: string;
}

const ETCD_CLIENT_PORT = 2379;
const ETCD_PEER_PORT = 2380;
const NATS_PORT = 4222;
const NATS_MONITOR_PORT = 8222;

/** Starts the server inside `netns`, listening on `host`; waits (bounded) until it answers. `onPid` records it at once. */
export async function startLabServer(
  kind: "etcd" | "nats",
  netns: string,
  host: string,
  stateDir: string,
  onPid: (s: LabServer) => void,
  opts: { natsServer?: string; timeoutMs?: number } = {},
): Promise<LabServer> {
  const timeoutMs = opts.timeoutMs ?? 20_000;
  const dataDir = join(stateDir, kind === "etcd" ? "etcd-data" : "nats-data");
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const logFile = join(stateDir, `${kind}.log`);
  let cmd: string[];
  let healthUrl: string;
  let storeFlags: string[];
  if (kind === "etcd") {
    const client = `http://${host}:${ETCD_CLIENT_PORT}`;
    const peer = `http://${host}:${ETCD_PEER_PORT}`;
    cmd = [
      "etcd",
      "--name",
      "lab",
      "--data-dir",
      dataDir,
      "--listen-client-urls",
      client,
      "--advertise-client-urls",
      client,
      "--listen-peer-urls",
      peer,
      "--initial-advertise-peer-urls",
      peer,
      "--initial-cluster",
      `lab=${peer}`,
      "--initial-cluster-state",
      "new",
      "--log-level",
      "warn",
    ];
    healthUrl = `${client}/health`;
    storeFlags = ["--store", "etcd", "--etcd-endpoints", client];
  } else {
    cmd = [opts.natsServer ?? "nats-server", "-a", host, "-p", String(NATS_PORT), "-m", String(NATS_MONITOR_PORT), "-js", "-sd", dataDir];
    healthUrl = `http://${host}:${NATS_MONITOR_PORT}/healthz`;
    storeFlags = ["--store", "nats", "--nats-url", `nats://${host}:${NATS_PORT}`];
  }
  const pid = spawnDetachedIn(netns, cmd, logFile);
  const server: LabServer = { kind, pid, dataDir, logFile, storeFlags, ...(opts.natsServer && { natsServer: opts.natsServer }) };
  onPid(server);
  await waitFor(`${kind} to answer ${healthUrl} in ${netns} (log: ${logFile})`, timeoutMs, async () => {
    if (!processAlive(pid)) throw new GiveUp(`${kind} (pid ${pid}) exited; see ${logFile}`);
    const r = await execIn(netns, ["curl", "-sf", "--max-time", "1", healthUrl], { allowFail: true, timeoutMs: 3000 });
    return r.code === 0 ? true : undefined;
  });
  return server;
}
