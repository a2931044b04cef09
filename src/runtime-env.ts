// The agent's runtime settings (src/runtime-env-first.ts applies them before any other module is loaded).
//
// Bun's idle GC controller wakes a parked process every second (and runs a sequence of full collections in its
// first minutes of quiet). For the agent, a long-lived process that allocates almost nothing once its peers are
// programmed, that was most of its idle CPU (measured: 0.16 -> 0.09 s per idle minute at 10k peers, 0.13 -> 0.03 s at
// 100 peers on etcd, RssAnon unchanged: JSC's own allocation-paced collections still run). The controller reads its
// switch from the environment only when the runtime starts, so the agent re-executes itself once, in place (same PID,
// so systemd, PID files and supervisors see no change), with BUN_GC_TIMER_DISABLE=1. It costs one runtime start
// (~5 ms of CPU) and is skipped for every short-lived command. Setting BUN_GC_TIMER_DISABLE yourself (to 0 or 1) keeps
// that choice and skips the re-exec.
import { readFileSync } from "node:fs";
import { basename } from "node:path";

export const HELP = new Set(["--help", "-h", "-help"]);
export const VERSION_FLAGS = new Set(["--version", "-version"]);

/** True when args (after the program name) start the long-running agent, as src/main.ts decides it. */
export function runsAgent(prog: string, args: string[]): boolean {
  if (prog === "mk-docker-opts" || prog === "mk-docker-opts.sh") return false;
  const flanneld = prog === "flanneld";
  const first = args[0];
  if (args.length === 1 && (VERSION_FLAGS.has(first!) || (!flanneld && first === "-v"))) return false;
  if (args.some((a) => HELP.has(a))) return false;
  return flanneld || first === "run" || first?.startsWith("-") === true;
}

/** Re-executes this process in place with BUN_GC_TIMER_DISABLE=1 when it is the agent; returns when it is not. */
export function reexecWithoutIdleGcTimer(): void {
  if (process.env.BUN_GC_TIMER_DISABLE !== undefined) return;
  const execve = (process as { execve?: (file: string, args: string[], env: Record<string, string | undefined>) => never }).execve;
  if (typeof execve !== "function") return;
  let argv: string[];
  try {
    // The exact argv this process got (argv[0] included: a link named flanneld stays flanneld).
    argv = readFileSync("/proc/self/cmdline", "latin1").split("\0").slice(0, -1);
  } catch {
    return; // no /proc: run as we are
  }
  if (argv.length === 0 || !runsAgent(basename(process.argv0 || argv[0]!), process.argv.slice(2))) return;
  try {
    execve.call(process, "/proc/self/exe", argv, { ...process.env, BUN_GC_TIMER_DISABLE: "1" });
  } catch {
    // execve refused (e.g. a seccomp profile): the agent works the same, only with the runtime's idle timer.
  }
}
