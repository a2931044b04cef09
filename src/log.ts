// Logging. Tagged loggers that follow consola's current reporters: consola.withTag() copies the reporter list when it
// is called, so a logger made at import time would never reach a reporter added later (tests capture logs that way).
//
// Off a terminal (journald, a pipe, a file) or with NO_COLOR set, every event is one plain line with a level word:
// `info [agent] using the etcd store at ...`, no colour codes. On a terminal consola's coloured output stays.
// The klog/glog flags of flanneld (flags.ts LOG_FLAGS) mean here:
//   -v=N              N >= 2: debug lines too; N >= 4: trace lines too
//   --logtostderr     true (default): all lines to stderr. false: lines go to <log_dir>/flanneld.log (appended),
//                     and only lines at --stderrthreshold or above (default 2 = ERROR) also to stderr
//   --alsologtostderr with --logtostderr=false: every line to stderr as well
//   --log_dir         the folder of flanneld.log (default: the system temp folder, as glog); unused with logtostderr
//   -vmodule, -log_backtrace_at: accepted, no effect (one notice)
import { closeSync, mkdirSync, openSync, readlinkSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import { type ConsolaInstance, type ConsolaReporter, type LogObject, createConsola } from "consola/core";

/**
 * consola's own default level: debug with DEBUG, warn under a test runner (NODE_ENV=test or TEST), else info.
 * NODE_ENV as consola reads it: `process.env.NODE_ENV` written out, which the bundler fixes at build time.
 */
function defaultLevel(env: Record<string, string | undefined> = process.env): number {
  const on = (v: string | undefined) => v !== undefined && v !== "" && v !== "false";
  const level = on(env.DEBUG) ? 4 : process.env.NODE_ENV === "test" || on(env.TEST) ? 1 : 3;
  const forced = env.CONSOLA_LEVEL ? Number.parseInt(env.CONSOLA_LEVEL, 10) : Number.NaN;
  return Number.isNaN(forced) ? level : forced;
}

/** Plain lines on stderr, written at once (as Node writes to a pipe or file on Linux). */
const toStderr = (line: string) => {
  try {
    writeSync(2, `${line}\n`);
  } catch {}
};

/**
 * The program's consola instance: built from consola/core, because the full "consola" module reads process.stdout
 * and process.stderr when it is imported, and making those streams cost ~9 ms of CPU at every start (a third of an
 * idle agent's start). Plain lines by default; setUpLogging() takes consola's own reporters on a colour terminal.
 */
export const consola: ConsolaInstance = createConsola({
  level: defaultLevel(),
  defaults: { level: defaultLevel() },
  reporters: [plainReporter(toStderr)],
});

export function logger(tag: string): ConsolaInstance {
  return new Proxy({} as ConsolaInstance, { get: (_t, prop) => Reflect.get(tagged(tag), prop) });
}

interface Tagged {
  inst: ConsolaInstance;
  level: number;
  reporters: ConsolaReporter[];
  mock: unknown;
}
const taggedCache = new Map<string, Tagged>();

/**
 * consola.withTag(tag), made again only when what it copied from consola changed (its level, its reporters, a mock):
 * making one costs more than the log line (a debug line that is filtered out too). Never throttled, as a fresh
 * instance per line was not (consola folds repeats of a line per instance).
 */
function tagged(tag: string): ConsolaInstance {
  const reporters = consola.options.reporters;
  const mock = (consola as unknown as { _mockFn?: unknown })._mockFn;
  const c = taggedCache.get(tag);
  if (
    c &&
    c.level === consola.level &&
    c.mock === mock &&
    c.reporters.length === reporters.length &&
    c.reporters.every((r, i) => r === reporters[i])
  )
    return c.inst;
  const inst = consola.withTag(tag);
  inst.options.throttle = 0;
  taggedCache.set(tag, { inst, level: consola.level, reporters: [...reporters], mock });
  return inst;
}

const LEVEL_WORD: Record<string, string> = {
  fatal: "fatal",
  error: "error",
  fail: "error",
  warn: "warn",
  debug: "debug",
  trace: "trace",
  verbose: "trace",
};

/** glog severities: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL. */
function severity(type: string): number {
  if (type === "fatal") return 3;
  if (type === "error" || type === "fail") return 2;
  if (type === "warn") return 1;
  return 0;
}

/** One event as one line: `<level> [<tag>] <message>`; line breaks inside the message become spaces. */
export function plainLine(o: Pick<LogObject, "type" | "tag" | "args"> & { message?: string }): string {
  const text = [o.message, ...o.args]
    .filter((a) => a !== undefined)
    .map((a) => (typeof a === "string" ? a : a instanceof Error ? a.message : inspect(a, { breakLength: Number.POSITIVE_INFINITY })))
    .join(" ");
  const msg = text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter(Boolean)
    .join(" ");
  return `${LEVEL_WORD[o.type] ?? "info"}${o.tag ? ` [${o.tag}]` : ""} ${msg}`;
}

/** Whether output to this stream may carry colour codes. */
export function colourAllowed(
  stream: { isTTY?: boolean } = { isTTY: stderrIsTerminal() },
  env: Record<string, string | undefined> = process.env,
): boolean {
  return stream.isTTY === true && env.NO_COLOR === undefined && env.TERM !== "dumb";
}

/** Whether stderr is a terminal, without making process.stderr (see `consola` above). */
function stderrIsTerminal(): boolean {
  try {
    return /^\/dev\/(pts\/|tty)/.test(readlinkSync("/proc/self/fd/2"));
  } catch {
    return process.stderr.isTTY === true;
  }
}

function plainReporter(write: (line: string, severity: number) => void): ConsolaReporter {
  return { log: (o) => write(plainLine(o), severity(o.type)) };
}

/** Replaces the reporters in place (derived consola instances share the array, so they follow too). */
function useReporters(...reporters: ConsolaReporter[]): void {
  const list = consola.options.reporters;
  list.splice(0, list.length, ...reporters);
}

let fileFd: number | null = null;

/** Plain lines on stderr unless stderr is a terminal that may show colour. Called once at start by main.ts. */
export async function setUpLogging(): Promise<void> {
  if (!colourAllowed()) return;
  // consola's own choice of reporter (fancy, or basic on CI), writing to its streams.
  const full = (await import("consola")).consola;
  consola.options.stdout = process.stdout;
  consola.options.stderr = process.stderr;
  useReporters(...full.options.reporters);
}

export interface LogFlags {
  v: number;
  vmodule?: string;
  log_backtrace_at?: string;
  logtostderr: boolean;
  alsologtostderr: boolean;
  log_dir?: string;
  stderrthreshold: string;
}

const THRESHOLD: Record<string, number> = { "0": 0, "1": 1, "2": 2, "3": 3, info: 0, warning: 1, error: 2, fatal: 3 };

/** Applies flanneld's logging flags (see the top of this file). */
export function applyLogFlags(f: LogFlags): void {
  const log = logger("log");
  if (f.v >= 4) consola.level = 5;
  else if (f.v >= 2) consola.level = 4;
  if (f.vmodule) log.info("-vmodule is accepted for flanneld compatibility and has no effect (use -v)");
  if (f.log_backtrace_at) log.info("-log_backtrace_at is accepted for flanneld compatibility and has no effect");
  if (f.logtostderr) {
    if (f.log_dir) log.info(`--log_dir ${f.log_dir} is not used while --logtostderr is true (as glog); logging to stderr`);
    return;
  }
  const dir = f.log_dir || tmpdir();
  const file = join(dir, "flanneld.log");
  try {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    fileFd = openSync(file, "a", 0o644);
  } catch (e) {
    log.error(`cannot open log file ${file}: ${(e as Error).message}; logging to stderr`);
    return;
  }
  const threshold = THRESHOLD[f.stderrthreshold.toLowerCase()] ?? 2;
  const fd = fileFd;
  useReporters(
    plainReporter((line, sev) => {
      try {
        writeSync(fd, `${new Date().toISOString()} ${line}\n`);
      } catch {}
      if (f.alsologtostderr || sev >= threshold) toStderr(line);
    }),
  );
  toStderr(`info [log] logging to ${file}${f.alsologtostderr ? " and stderr" : ""}`);
}

/** Closes the --log_dir file (end of the process). */
export function closeLogFile(): void {
  if (fileFd !== null) closeSync(fileFd);
  fileFd = null;
}

/**
 * Keeps retried failures from flooding the log: the same text about the same key (a command line, a step) is
 * reported once, until forget(key) says it worked again. Bounded: it starts over after 10,000 keys.
 */
export class RepeatFilter {
  private readonly last = new Map<string, string>();
  isNew(key: string, text: string): boolean {
    if (this.last.get(key) === text) return false;
    if (this.last.size >= 10_000) this.last.clear();
    this.last.set(key, text);
    return true;
  }
  forget(key: string): void {
    if (this.last.size) this.last.delete(key);
  }
}
