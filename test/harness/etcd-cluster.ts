// A throw-away 3-member etcd cluster on loopback (distinct ports), for the fault tests: a member can be paused
// (SIGSTOP: its connections stay open and nothing answers), resumed, or killed. No bun:test imports here. Each member
// runs under the same sh supervisor as startEtcdServer (etcd never outlives the test process); signals go to the PID
// of the etcd that supervisor started, read from /proc, never to a process found by name.

import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { etcdMemberArgs, SUPERVISOR } from "./etcd-server.ts";
import { freePort, spawnWithTail, stopGracefully, type TailedProcess } from "./server-process.ts";

export interface EtcdMember {
  name: string;
  endpoint: string;
  /** SIGSTOP / SIGCONT the member's etcd. */
  pause(): void;
  resume(): void;
  /** SIGKILL the member's etcd. */
  kill(): Promise<void>;
  /** Starts a killed member again on its ports and data. */
  start(): Promise<void>;
}

export interface EtcdCluster {
  endpoints: string[];
  members: EtcdMember[];
  /** The member that is raft leader now (asked of every answering member). */
  leader(): Promise<EtcdMember>;
  stop(): Promise<void>;
}

const HOST = "127.0.0.1";

/** The PID of the one child of `pid` (the supervisor's etcd), or null. */
function childPid(pid: number): number | null {
  try {
    const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean);
    return kids.length > 0 ? Number(kids[0]) : null;
  } catch {
    return null;
  }
}

export async function startEtcdCluster(opts: { size?: number; startTimeoutMs?: number } = {}): Promise<EtcdCluster> {
  const size = opts.size ?? 3;
  const startTimeoutMs = opts.startTimeoutMs ?? 30_000;
  const root = await mkdtemp(join(tmpdir(), "flannel-etcd-cluster-"));
  const specs = Array.from({ length: size }, (_, i) => ({ name: `m${i + 1}`, client: freePort(), peer: freePort() }));
  const initialCluster = specs.map((s) => `${s.name}=http://${HOST}:${s.peer}`).join(",");
  const procs = new Map<string, TailedProcess<"pipe">>();
  const paused = new Set<string>();

  const spawn = (s: (typeof specs)[number], state: "new" | "existing") => {
    const client = `http://${HOST}:${s.client}`;
    const peer = `http://${HOST}:${s.peer}`;
    const args = [
      ...etcdMemberArgs({
        etcdPath: "/usr/bin/etcd",
        name: s.name,
        dataDir: join(root, s.name),
        client,
        peer,
        initialCluster,
        state,
        logLevel: "error",
      }),
      "--initial-cluster-token",
      `flannel-test-${process.pid}-${specs[0]!.peer}`,
    ];
    procs.set(s.name, spawnWithTail(["sh", "-c", SUPERVISOR, "etcd-supervisor", ...args], { stdin: "pipe" }));
  };

  const healthy = async (endpoint: string): Promise<boolean> => {
    try {
      const r = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
      const b = (await r.json()) as { health?: unknown };
      return r.ok && (b.health === "true" || b.health === true);
    } catch {
      return false;
    }
  };
  const waitHealthy = async (endpoints: string[]) => {
    const deadline = Date.now() + startTimeoutMs;
    for (;;) {
      const ok = await Promise.all(endpoints.map(healthy));
      if (ok.every(Boolean)) return;
      if (Date.now() > deadline) {
        const tails = [...procs.entries()].map(([n, p]) => `${n}: ${p.tail.slice(-5).join("\n")}`).join("\n");
        throw new Error(`etcd cluster not healthy within ${startTimeoutMs} ms:\n${tails}`);
      }
      await Bun.sleep(100);
    }
  };
  const etcdPid = (name: string): number => {
    const sup = procs.get(name);
    const pid = sup ? childPid(sup.p.pid) : null;
    if (pid === null) throw new Error(`etcd member ${name} has no running etcd`);
    return pid;
  };

  const stopAll = async () => {
    for (const name of paused) {
      try {
        process.kill(etcdPid(name), "SIGCONT");
      } catch {
        /* gone */
      }
    }
    paused.clear();
    await Promise.all([...procs.values()].map((p) => stopGracefully(p.p, "etcd", 5000)));
    procs.clear();
    await rm(root, { recursive: true, force: true });
  };

  try {
    for (const s of specs) spawn(s, "new");
    await waitHealthy(specs.map((s) => `http://${HOST}:${s.client}`));
  } catch (e) {
    await stopAll();
    throw e;
  }

  const members: EtcdMember[] = specs.map((s) => ({
    name: s.name,
    endpoint: `http://${HOST}:${s.client}`,
    pause() {
      process.kill(etcdPid(s.name), "SIGSTOP");
      paused.add(s.name);
    },
    resume() {
      process.kill(etcdPid(s.name), "SIGCONT");
      paused.delete(s.name);
    },
    async kill() {
      const sup = procs.get(s.name);
      if (!sup) return;
      process.kill(etcdPid(s.name), "SIGKILL");
      await Promise.race([sup.p.exited, Bun.sleep(5000)]);
      procs.delete(s.name);
    },
    async start() {
      spawn(s, "existing");
      await waitHealthy([`http://${HOST}:${s.client}`]);
    },
  }));

  return {
    endpoints: members.map((m) => m.endpoint),
    members,
    async leader() {
      for (const m of members) {
        if (paused.has(m.name) || !procs.has(m.name)) continue;
        try {
          const r = await fetch(`${m.endpoint}/v3/maintenance/status`, { method: "POST", body: "{}", signal: AbortSignal.timeout(2000) });
          const j = (await r.json()) as { leader?: string; header?: { member_id?: string } };
          if (j.leader && j.header?.member_id === j.leader) return m;
        } catch {
          /* ask the next */
        }
      }
      throw new Error("no etcd member says it is the leader");
    },
    stop: stopAll,
  };
}
