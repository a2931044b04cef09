// Lab plumbing: network namespaces, veth pairs, bridges and addresses via `ip`, each call with a bounded timeout and
// an error that names the command. This is only for the multi-host lab and tests, never the agent's data plane.
import { spawn as nodeSpawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";

export class LabCommandError extends Error {
  constructor(
    message: string,
    readonly code: number | null,
    readonly stderr: string,
  ) {
    super(message);
    this.name = "LabCommandError";
  }
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Run inside this network namespace (`ip netns exec <ns> …`). */
  netns?: string;
  /** Kill the command after this long (default 10 s). */
  timeoutMs?: number;
  /** Return a non-zero exit instead of throwing. */
  allowFail?: boolean;
}

const DEFAULT_TIMEOUT_MS = 10_000;

/** Runs a command to completion with a timeout; throws LabCommandError on non-zero exit unless allowFail. */
export async function run(cmd: string[], opts: RunOptions = {}): Promise<RunResult> {
  const argv = opts.netns ? ["ip", "netns", "exec", opts.netns, ...cmd] : cmd;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const proc = Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    proc.kill("SIGKILL");
  }, timeoutMs);
  try {
    const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    if (timedOut) throw new LabCommandError(`\`${argv.join(" ")}\` timed out after ${timeoutMs} ms`, null, stderr);
    if (code !== 0 && !opts.allowFail)
      throw new LabCommandError(`\`${argv.join(" ")}\` failed (exit ${code}): ${stderr.trim() || stdout.trim()}`, code, stderr);
    return { code, stdout, stderr };
  } finally {
    clearTimeout(timer);
  }
}

/** `ip [-n ns] <args>`; throws on failure. */
export async function ip(args: string[], netns?: string, opts: Omit<RunOptions, "netns"> = {}): Promise<RunResult> {
  return run(netns ? ["ip", "-n", netns, ...args] : ["ip", ...args], opts);
}

export async function netnsList(): Promise<string[]> {
  const r = await run(["ip", "netns", "list"]);
  // Lines look like "flab-h1 (id: 3)" or just "flab-h1".
  return r.stdout
    .split("\n")
    .map((l) => l.trim().split(/\s+/)[0] ?? "")
    .filter((n) => n !== "");
}

export async function netnsExists(name: string): Promise<boolean> {
  return (await netnsList()).includes(name);
}

/** Creates a namespace with lo up. Fails if it already exists (the lab never adopts a namespace it did not make). */
export async function netnsAdd(name: string): Promise<void> {
  await run(["ip", "netns", "add", name]);
  try {
    await ip(["link", "set", "lo", "up"], name);
  } catch (e) {
    await run(["ip", "netns", "del", name], { allowFail: true }); // ours, just made: leave nothing half-built
    throw e;
  }
}

/** Deletes a namespace; a missing one is not an error. */
export async function netnsDel(name: string): Promise<void> {
  if (!(await netnsExists(name))) return;
  await run(["ip", "netns", "del", name]);
}

/** A veth pair: `a` in netnsA, `b` in netnsB. */
export async function vethAdd(a: { name: string; netns: string }, b: { name: string; netns: string }, mtu?: number): Promise<void> {
  const args = ["link", "add", a.name];
  if (mtu) args.push("mtu", String(mtu));
  args.push("type", "veth", "peer", "name", b.name, "netns", b.netns);
  if (mtu) args.push("mtu", String(mtu));
  await ip(args, a.netns);
}

export async function bridgeAdd(netns: string, name: string, mtu?: number): Promise<void> {
  const args = ["link", "add", name];
  if (mtu) args.push("mtu", String(mtu));
  args.push("type", "bridge");
  await ip(args, netns);
}

export async function linkSetMaster(netns: string, dev: string, master: string): Promise<void> {
  await ip(["link", "set", dev, "master", master], netns);
}

export async function linkUp(netns: string, dev: string): Promise<void> {
  await ip(["link", "set", dev, "up"], netns);
}

export async function addrAdd(netns: string, dev: string, cidr: string): Promise<void> {
  await ip(["addr", "add", cidr, "dev", dev], netns);
}

export async function defaultRouteAdd(netns: string, via: string): Promise<void> {
  await ip(["route", "add", "default", "via", via], netns);
}

/** Sets a sysctl inside a namespace (e.g. net.ipv4.ip_forward=1). */
export async function sysctlSet(netns: string, key: string, value: string): Promise<void> {
  await run(["sysctl", "-qw", `${key}=${value}`], { netns });
}

/** Runs a command inside a namespace. */
export async function execIn(netns: string, cmd: string[], opts: Omit<RunOptions, "netns"> = {}): Promise<RunResult> {
  return run(cmd, { ...opts, netns });
}

/**
 * Starts `cmd` inside a namespace as a detached process (own session, survives this process), stdout and stderr
 * appended to logFile. Returns its PID: `ip netns exec` execs the command, so the PID is the command's own.
 */
export function spawnDetachedIn(netns: string, cmd: string[], logFile: string): number {
  const fd = openSync(logFile, "a", 0o644);
  try {
    const child = nodeSpawn("ip", ["netns", "exec", netns, ...cmd], { detached: true, stdio: ["ignore", fd, fd] });
    if (child.pid === undefined) throw new LabCommandError(`could not start \`${cmd.join(" ")}\` in ${netns}`, null, "");
    child.unref();
    return child.pid;
  } finally {
    closeSync(fd);
  }
}

/** The process's argv, or null if it is gone (or a zombie with no cmdline). */
export function processArgv(pid: number): string[] | null {
  try {
    const raw = readFileSync(`/proc/${pid}/cmdline`, "utf8");
    if (raw === "") return null;
    return raw.split("\0").filter((s) => s !== "");
  } catch {
    return null;
  }
}

/** True if the PID is alive and not a zombie. */
export function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Field 3 (after "(comm)") is the state; Z = zombie, X = dead.
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

/**
 * Stops a process we started, by PID: only if its argv still contains `mustContain` (guards against PID reuse).
 * SIGTERM, then SIGKILL after graceMs. True once it is gone; false if it was not running, was someone else's,
 * or survived SIGKILL.
 */
export async function stopProcess(pid: number, mustContain: string, graceMs = 5_000): Promise<boolean> {
  const argv = processArgv(pid);
  if (!argv || !processAlive(pid) || !argv.some((a) => a.includes(mustContain))) return false;
  try {
    process.kill(pid, "SIGTERM");
  } catch {
    return false;
  }
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    if (!processAlive(pid)) return true;
    await Bun.sleep(50);
  }
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    /* already gone */
  }
  for (let i = 0; i < 40 && processAlive(pid); i++) await Bun.sleep(50);
  return !processAlive(pid);
}

/** Thrown from a waitFor check to stop waiting at once (e.g. the process being waited for has died). */
export class GiveUp extends Error {}

/** Waits (bounded) until check() returns a value other than undefined; throws `what` on timeout. */
export async function waitFor<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined>, intervalMs = 250): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (let i = 0; i < 100_000; i++) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (e) {
      if (e instanceof GiveUp) throw e;
      lastError = e;
    }
    if (Date.now() >= deadline) break;
    await Bun.sleep(intervalMs);
  }
  const why = lastError instanceof Error ? `: ${lastError.message}` : "";
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
}
