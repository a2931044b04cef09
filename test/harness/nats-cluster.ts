// A throw-away 3-server NATS cluster with JetStream on loopback (distinct ports): one config file per server with
// `cluster { routes }` and `jetstream { store_dir }`, for the fault tests (a server paused with SIGSTOP, or killed,
// and started again on the same store). No bun:test imports here. Processes are stopped only by the PID started here.

import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, spawnWithTail, stopGracefully, type TailedProcess } from "./server-process.ts";

export interface NatsClusterServer {
  name: string;
  url: string;
  pause(): void;
  resume(): void;
  kill(): Promise<void>;
  start(): Promise<void>;
}

export interface NatsCluster {
  urls: string[];
  servers: NatsClusterServer[];
  byName(name: string): NatsClusterServer;
  stop(): Promise<void>;
}

const HOST = "127.0.0.1";

/** `binary`: the nats-server to run (default Debian's /usr/sbin/nats-server). */
export async function startNatsCluster(opts: { size?: number; binary?: string; startTimeoutMs?: number } = {}): Promise<NatsCluster> {
  const size = opts.size ?? 3;
  const binary = opts.binary ?? "/usr/sbin/nats-server";
  const startTimeoutMs = opts.startTimeoutMs ?? 20_000;
  const root = await mkdtemp(join(tmpdir(), "flannel-nats-cluster-"));
  const specs = Array.from({ length: size }, (_, i) => ({ name: `n${i + 1}`, port: freePort(), cport: freePort() }));
  const procs = new Map<string, TailedProcess<"ignore">>();
  const paused = new Set<string>();
  const q = (s: string) => JSON.stringify(s);

  for (const s of specs) {
    const routes = specs.filter((o) => o !== s).map((o) => q(`nats://${HOST}:${o.cport}`));
    const conf = [
      `server_name: ${q(s.name)}`,
      `listen: ${q(`${HOST}:${s.port}`)}`,
      `jetstream { store_dir: ${q(join(root, s.name))} }`,
      `cluster { name: "flannel-test", listen: ${q(`${HOST}:${s.cport}`)}, routes: [${routes.join(", ")}] }`,
    ].join("\n");
    await writeFile(join(root, `${s.name}.conf`), `${conf}\n`);
  }

  const spawn = async (s: (typeof specs)[number]) => {
    let markReady: () => void = () => {};
    const ready = new Promise<void>((resolve) => (markReady = resolve));
    const p = spawnWithTail([binary, "-c", join(root, `${s.name}.conf`)], {
      stdin: "ignore",
      onLine: (l) => {
        if (l.includes("Server is ready")) markReady();
      },
    });
    procs.set(s.name, p);
    const outcome = await Promise.race([
      ready.then(() => "ready"),
      p.p.exited.then(() => "exited"),
      Bun.sleep(startTimeoutMs).then(() => "timeout"),
    ]);
    if (outcome !== "ready") throw new Error(`nats-server ${s.name} ${outcome} before it was ready:\n${p.tail.join("\n")}`);
  };

  const stopAll = async () => {
    for (const name of paused) procs.get(name)?.p.kill("SIGCONT");
    paused.clear();
    await Promise.all([...procs.values()].map((p) => stopGracefully(p.p, "nats-server", 5000)));
    procs.clear();
    await rm(root, { recursive: true, force: true });
  };

  try {
    await Promise.all(specs.map(spawn));
  } catch (e) {
    await stopAll();
    throw e;
  }

  const servers: NatsClusterServer[] = specs.map((s) => ({
    name: s.name,
    url: `nats://${HOST}:${s.port}`,
    pause() {
      procs.get(s.name)?.p.kill("SIGSTOP");
      paused.add(s.name);
    },
    resume() {
      procs.get(s.name)?.p.kill("SIGCONT");
      paused.delete(s.name);
    },
    async kill() {
      const p = procs.get(s.name);
      if (!p) return;
      p.p.kill("SIGKILL");
      await Promise.race([p.p.exited, Bun.sleep(5000)]);
      procs.delete(s.name);
    },
    start: () => spawn(s),
  }));
  return {
    urls: servers.map((s) => s.url),
    servers,
    byName(name) {
      const s = servers.find((x) => x.name === name);
      if (!s) throw new Error(`no NATS server named ${name}`);
      return s;
    },
    stop: stopAll,
  };
}
