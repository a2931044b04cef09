// A booted Debian 12 with systemd as PID 1, joined to a lab host's network namespace:
//   systemd-nspawn -b --register=no --keep-unit --capability=CAP_NET_ADMIN --network-namespace-path=/var/run/netns/<host>
// Its root is a shared unpacked tree under --volatile=overlay (writes go to a tmpfs that is gone when it stops), so
// two machines share one copy and a stopped machine leaves nothing behind. Commands run in it with
// `nsenter -t <leader> -a`, with a clean environment; host folders can be bound in read-only. Stopped by the nspawn PID we started, never by name.
import { openSync, closeSync, readFileSync, readdirSync } from "node:fs";
import { spawn as nodeSpawn } from "node:child_process";
import { type RunResult, processAlive, processArgv, run, stopProcess } from "../../src/lab/netns.ts";
import { unmountUnder } from "./rootfs.ts";

export interface Machine {
  name: string;
  netns: string;
  nspawnPid: number;
  /** The machine's PID 1 (systemd), as seen from here. */
  leader: number;
  log: string;
}

const PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

function childOf(pid: number): number | null {
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) return Number(e);
    } catch {
      /* gone */
    }
  }
  return null;
}

/** Boots `rootDir` as machine `name` in /var/run/netns/<netns>; waits (bounded) until systemd says running. */
export async function bootMachine(
  name: string,
  netns: string,
  rootDir: string,
  log: string,
  onPid: (pid: number) => void,
  /** Host folders seen read-only in the machine: [host path, machine path]. */
  bindReadOnly: [string, string][] = [],
): Promise<Machine> {
  const fd = openSync(log, "a", 0o644);
  let pid: number;
  try {
    const child = nodeSpawn(
      "systemd-nspawn",
      [
        "-b",
        "--register=no",
        "--keep-unit",
        "--capability=CAP_NET_ADMIN",
        `--network-namespace-path=/var/run/netns/${netns}`,
        "--volatile=overlay",
        "--console=read-only",
        `--machine=${name}`,
        `--directory=${rootDir}`,
        ...bindReadOnly.map(([from, to]) => `--bind-ro=${from}:${to}`),
      ],
      { detached: true, stdio: ["ignore", fd, fd], env: { PATH, SYSTEMD_LOG_LEVEL: "info" } },
    );
    if (child.pid === undefined) throw new Error(`could not start systemd-nspawn for ${name}`);
    child.unref();
    pid = child.pid;
  } finally {
    closeSync(fd);
  }
  onPid(pid);
  const deadline = Date.now() + 90_000;
  let leader: number | null = null;
  let state = "";
  for (let i = 0; i < 1000 && Date.now() < deadline; i++) {
    if (!processAlive(pid)) throw new Error(`systemd-nspawn for ${name} exited; its log ${log}:\n${tail(log)}`);
    leader ??= childOf(pid);
    if (leader !== null) {
      const m: Machine = { name, netns, nspawnPid: pid, leader, log };
      state = (await machineExec(m, ["systemctl", "is-system-running"], { allowFail: true, timeoutMs: 10_000 })).stdout.trim();
      if (state === "running" || state === "degraded") return m;
    }
    await Bun.sleep(250);
  }
  throw new Error(`machine ${name} did not finish booting in 90 s (state ${JSON.stringify(state)}); log ${log}:\n${tail(log)}`);
}

function tail(file: string, n = 20): string {
  try {
    return readFileSync(file, "utf8").trimEnd().split("\n").slice(-n).join("\n");
  } catch {
    return "(no log)";
  }
}

/** Runs argv inside the machine (all its namespaces, clean environment plus `env`); bounded, default 60 s. */
export function machineExec(
  m: Machine,
  argv: string[],
  opts: { env?: Record<string, string>; timeoutMs?: number; allowFail?: boolean } = {},
): Promise<RunResult> {
  const envArgs = Object.entries({ PATH, ...opts.env }).map(([k, v]) => `${k}=${v}`);
  return run(["nsenter", "-t", String(m.leader), "-a", "env", "-i", ...envArgs, ...argv], {
    timeoutMs: opts.timeoutMs ?? 60_000,
    allowFail: opts.allowFail,
  });
}

/** `sh -c script` inside the machine. */
export function machineSh(m: Machine, script: string, opts: Parameters<typeof machineExec>[2] = {}): Promise<RunResult> {
  return machineExec(m, ["sh", "-c", script], opts);
}

/** Stops a machine by the nspawn PID we started (SIGTERM = clean poweroff, then SIGKILL) and unmounts leftovers. */
export async function stopMachine(nspawnPid: number, name: string, rootDir: string): Promise<void> {
  const argv = processArgv(nspawnPid);
  if (argv?.some((a) => a === `--machine=${name}`)) await stopProcess(nspawnPid, `--machine=${name}`, 30_000);
  unmountUnder(rootDir);
  unmountUnder(`/run/systemd/nspawn/propagate/${name}`);
}
