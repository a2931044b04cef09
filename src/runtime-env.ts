// The agent's runtime settings (src/main.ts applies them before any other module is loaded). Both are read
// from the environment only when the runtime starts, so the agent re-executes itself once, in place (same PID, so
// systemd, PID files and supervisors see no change), with them set. It costs one runtime start (5-8 ms of CPU) and is
// skipped for every short-lived command. A setting already in the environment (an operator's, say `0` for the timer)
// is kept as it is; with both set there is no re-exec.
//
// BUN_GC_TIMER_DISABLE=1: Bun's idle GC controller wakes a parked process every second (and runs a sequence of full
// collections in its first minutes of quiet). For the agent, a long-lived process that allocates almost nothing once
// its peers are programmed, that was most of its idle CPU (measured: 0.16 -> 0.09 s per idle minute at 10k peers,
// 0.13 -> 0.03 s at 100 peers on etcd, RssAnon unchanged: JSC's own allocation-paced collections still run).
//
// MIMALLOC_PURGE_DELAY=0: the runtime's allocator (mimalloc) hands freed pages back to the kernel 100 ms after they
// are freed, and only at its next call after that, so much of what the start-up collection frees (agent/startup-gc.ts)
// stayed resident past ready. Partly used pages are still purged by mimalloc's own background thread within ~200 ms
// (10k peers, RssAnon at ready: 54-61 MB before, 41-62 MB with this and the shrink done first; settled 34-42 MB). In a
// 50-agent start its scavenger thread no longer runs (agent CPU 7.2-7.6 -> 6.5-6.8 s on NATS).
import { readFileSync } from "node:fs";
import { basename } from "node:path";

export const HELP = new Set(["--help", "-h", "-help"]);
export const VERSION_FLAGS = new Set(["--version", "-version"]);

/** What a command line asks for. src/main.ts acts on it; the re-exec below asks it whether this is the agent. */
export type Invocation =
  | { kind: "mk-docker-opts"; args: string[]; name: string }
  | { kind: "version" }
  | { kind: "help"; args: string[]; flanneld: boolean }
  /** citty's argv; args[0] === "run" is the agent. */
  | { kind: "command"; args: string[]; flanneld: boolean };

/**
 * argv0 as the process was started (a link named flanneld runs the agent with flanneld's flags, one named
 * mk-docker-opts.sh is that script), args after it.
 */
export function classify(argv0: string, args: string[]): Invocation {
  const prog = basename(argv0 || "flannel-bin");
  if (prog === "mk-docker-opts.sh" || prog === "mk-docker-opts") return { kind: "mk-docker-opts", args, name: argv0 };
  if (args[0] === "mk-docker-opts") return { kind: "mk-docker-opts", args: args.slice(1), name: "flannel-bin mk-docker-opts" };
  const flanneld = prog === "flanneld";
  // flanneld's -v is its log level, ours is --version.
  if (args.length === 1 && (VERSION_FLAGS.has(args[0]!) || (!flanneld && args[0] === "-v"))) return { kind: "version" };
  // flanneld's command lines: flags without a command run the agent.
  const cmd = flanneld || (args[0]?.startsWith("-") && !HELP.has(args[0])) ? ["run", ...args] : args;
  if (cmd.length === 0 || cmd.some((a) => HELP.has(a))) return { kind: "help", args: cmd, flanneld };
  return { kind: "command", args: cmd, flanneld };
}

/** True when args (after the program name) start the long-running agent. */
export function runsAgent(argv0: string, args: string[]): boolean {
  const inv = classify(argv0, args);
  return inv.kind === "command" && inv.args[0] === "run";
}

/** The agent's runtime settings (see the top of this file). */
const AGENT_RUNTIME_ENV: Readonly<Record<string, string>> = { BUN_GC_TIMER_DISABLE: "1", MIMALLOC_PURGE_DELAY: "0" };

/** The settings of AGENT_RUNTIME_ENV that `env` does not have yet (an operator's own value is kept). */
export function missingRuntimeEnv(env: Record<string, string | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(AGENT_RUNTIME_ENV)) if (env[k] === undefined) out[k] = v;
  return out;
}

/** Re-executes this process in place with the agent's runtime settings when it is the agent; returns when it is not. */
export function reexecWithAgentRuntimeEnv(): void {
  const missing = missingRuntimeEnv(process.env);
  if (Object.keys(missing).length === 0) return;
  const execve = (process as { execve?: (file: string, args: string[], env: Record<string, string | undefined>) => never }).execve;
  if (typeof execve !== "function") return;
  let argv: string[];
  try {
    // The exact argv this process got (argv[0] included: a link named flanneld stays flanneld).
    argv = readFileSync("/proc/self/cmdline", "latin1").split("\0").slice(0, -1);
  } catch {
    return; // no /proc: run as we are
  }
  if (argv.length === 0 || !runsAgent(process.argv0 || argv[0]!, process.argv.slice(2))) return;
  try {
    execve.call(process, "/proc/self/exe", argv, { ...process.env, ...missing });
  } catch {
    // execve refused (e.g. a seccomp profile): the agent works the same, only with the runtime's defaults.
  }
}
