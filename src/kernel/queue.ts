// The only place that runs iproute2. Commands queued within a short window are written to ONE `ip -force -batch -`
// (or `bridge -force -batch -`) process per run of same-tool commands: starting a process costs ~100x the kernel work
// of one route (field-notes §3.3), a batch costs ~10 µs per line.
//
// runAll() takes an iterable and pulls it lazily: the process is started with the first command and lines are
// written to its stdin in chunks as they are produced, so the caller's planning (a generator) overlaps the kernel's
// work instead of preceding it.
//
// iproute2 6.1 batch behaviour this relies on (checked by hand and by test/kernel/queue.test.ts):
// - with -force it keeps going past a failing line and prints the error text, then `Command failed -:N` (N = 1-based
//   line number) on stderr; exit status 1 if anything failed;
// - BUT `ip neigh` calls exit(2) when the kernel rejects the request (e.g. deleting an absent entry), and argument
//   errors call exit(255): the rest of the batch is silently not run. We detect that from the exit status and re-run
//   the unknown tail in "probe" mode, where a marker line (an unknown object, rejected in user space without touching
//   the kernel) follows every command, so the marker reports tell exactly how far the process got.
import type { Command, Tool } from "./commands.ts";
import { logger, RepeatFilter } from "../log.ts";

export type { Command } from "./commands.ts";

const log = logger("kernel");

export interface CommandResult {
  cmd: Command;
  ok: boolean;
  /** Error text iproute2 printed for the last failed try. */
  error?: string;
  /** How many times the command was sent. */
  tries: number;
}

export interface QueueStats {
  /** Command lines sent to iproute2 (retries included, probe markers not). */
  sent: number;
  /** Commands that still failed after their last try. */
  failed: number;
  /** Retry attempts. */
  retried: number;
  /** iproute2 processes started for batches. */
  batches: number;
}

export interface QueueOptions {
  /** Run as `ip -n <ns>` / `bridge -n <ns>`. */
  netns?: string;
  /** Coalescing window for run(): commands queued within it share a process. Default 5 ms. */
  windowMs?: number;
  /** Most lines per process. Default 100,000 (lines are streamed: a long batch costs no big buffer). */
  maxBatch?: number;
  /** Most tries per command (first try included). Default 5. */
  maxRetries?: number;
  /** First retry delay; doubles per retry. Default 100 ms. */
  retryBaseMs?: number;
}

/** Results of one run()/runAll() call: a single promise however many commands (10,000 promises cost real time). */
interface Group {
  results: CommandResult[];
  /** Commands taken from the source and not settled yet. */
  left: number;
  /** The source has no more commands (until then `left` reaching 0 settles nothing). */
  sealed: boolean;
  resolve: (r: CommandResult[]) => void;
  reject: (e: unknown) => void;
}

/** A runAll() source not yet (fully) taken into batches: commands are pulled from it as lines are written. */
interface Source {
  iter: Iterator<Command>;
  /** Pulled before queueing (to see whether it is empty); taken first. */
  head: Command | undefined;
  group: Group;
}

interface Pending {
  cmd: Command;
  tries: number;
  group: Group;
  index: number;
}

function settle(p: Pending, r: CommandResult): void {
  const g = p.group;
  g.results[p.index] = r;
  if (--g.left === 0 && g.sealed) g.resolve(g.results);
}

const isSource = (x: Pending | Source): x is Source => "iter" in x;

/** A result's place while its command runs (settle() replaces it); growing the array by push keeps it packed. */
const UNSETTLED: CommandResult = { cmd: { tool: "ip", line: "" }, ok: false, tries: 0 };

type LineResult = { ok: true } | { ok: false; error: string };
const LINE_OK: LineResult = { ok: true };

const NETNS = /^[A-Za-z0-9._-]{1,64}$/;
// Lines per write to a batch process's stdin: big enough to keep syscalls few, small enough that ip starts early.
const CHUNK_LINES = 256;
// Rejected by ip/bridge in user space ("Object ... is unknown"); it is not a prefix of any object name.
const MARKER = "fbt-marker";
const FAILED = /^Command failed .*:(\d+)$/;
// What iproute2 prints when the thing to delete is already gone (ESRCH, ENOENT, EADDRNOTAVAIL, missing device or
// nexthop: "Nexthop id does not exist").
const ABSENT =
  /No such process|No such file or directory|Address not found|Cannot assign requested address|Cannot find device|does not exist/;

/** Every iproute2 process this program started (batches, reads, monitors): an idle agent starts none. */
export const processesSpawned = { count: 0 };

export function nsArgs(netns: string | undefined): string[] {
  if (netns === undefined) return [];
  if (!NETNS.test(netns)) throw new Error(`invalid network namespace name ${JSON.stringify(netns)}`);
  return ["-n", netns];
}

export class CommandQueue {
  private readonly ns: string[];
  private readonly windowMs: number;
  private readonly maxBatch: number;
  private readonly maxRetries: number;
  private readonly retryBaseMs: number;
  private pending: (Pending | Source)[] = [];
  private timer: ReturnType<typeof setTimeout> | null = null;
  private running: Promise<void> | null = null;
  private readonly retryTimers = new Set<ReturnType<typeof setTimeout>>();
  private readonly waitingRetry = new Set<Pending>();
  private closed = false;
  private readonly repeats = new RepeatFilter();
  private readonly counters: QueueStats = { sent: 0, failed: 0, retried: 0, batches: 0 };

  constructor(opts: QueueOptions = {}) {
    this.ns = nsArgs(opts.netns);
    this.windowMs = opts.windowMs ?? 5;
    this.maxBatch = Math.max(1, opts.maxBatch ?? 100_000);
    this.maxRetries = Math.max(1, opts.maxRetries ?? 5);
    this.retryBaseMs = opts.retryBaseMs ?? 100;
  }

  /** Queues one command; resolves with its own result (never rejects for a kernel error). */
  run(cmd: Command): Promise<CommandResult> {
    if (this.closed) return Promise.resolve(closedResult(cmd, 0));
    const p = new Promise<CommandResult[]>((resolve, reject) => {
      const group: Group = { results: [], left: 1, sealed: true, resolve, reject };
      this.pending.push({ cmd, tries: 0, group, index: 0 });
    });
    this.schedule(this.pending.length >= this.maxBatch ? 0 : this.windowMs);
    return p.then((r) => r[0]!);
  }

  /**
   * Queues commands in order and sends them at once (no window wait): the caller has already batched them. `cmds`
   * is pulled lazily, while earlier lines already run (a generator may plan as it goes); results come in its order.
   * Rejects only if iterating `cmds` throws (commands already sent still run).
   */
  runAll(cmds: Iterable<Command>): Promise<CommandResult[]> {
    let iter: Iterator<Command>;
    let first: IteratorResult<Command>;
    try {
      iter = cmds[Symbol.iterator]();
      if (this.closed) return Promise.resolve(drainClosed(iter, []));
      first = iter.next();
    } catch (e) {
      return Promise.reject(e);
    }
    if (first.done) return Promise.resolve([]);
    const p = new Promise<CommandResult[]>((resolve, reject) => {
      this.pending.push({ iter, head: first.value, group: { results: [], left: 0, sealed: false, resolve, reject } });
    });
    this.schedule(0);
    return p;
  }

  stats(): QueueStats {
    return { ...this.counters };
  }

  /** Stops timers; commands not yet sent resolve as failed. */
  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const t of this.retryTimers) clearTimeout(t);
    this.retryTimers.clear();
    const dropped = [...this.pending.splice(0), ...this.waitingRetry];
    this.waitingRetry.clear();
    for (const p of dropped) {
      if (!isSource(p)) settle(p, closedResult(p.cmd, p.tries));
      else this.dropSource(p);
    }
  }

  /** A source that will not be sent (closed queue): every command it still has fails. */
  private dropSource(s: Source): void {
    const g = s.group;
    try {
      if (s.head) g.results.push(closedResult(s.head, 0));
      s.head = undefined;
      drainClosed(s.iter, g.results);
    } catch (e) {
      g.reject(e);
      return;
    }
    g.sealed = true;
    if (g.left === 0) g.resolve(g.results);
  }

  private schedule(delayMs: number): void {
    if (this.closed || this.running) return; // a running flush loop picks up whatever is pending
    if (delayMs > 0) {
      this.timer ??= setTimeout(() => {
        this.timer = null;
        this.startFlush();
      }, delayMs);
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.startFlush();
  }

  /** Now, not on the next timer tick: the process starts (and the first lines are written) before runAll() returns. */
  private startFlush(): void {
    this.running = this.flushLoop().finally(() => {
      this.running = null;
      if (this.pending.length) this.schedule(0);
    });
  }

  private async flushLoop(): Promise<void> {
    while (this.pending.length && !this.closed) {
      // Phases in queue order: a new process where the tool changes (ordering across ip/bridge) or at maxBatch.
      const feed = new Feed(this.pending.splice(0, this.pending.length));
      let next = feed.take();
      while (next && !this.closed) next = (await this.sendSegment(next, feed)) ?? feed.take();
      if (!this.closed) continue;
      // Closed meanwhile: what was not taken yet fails like everything close() found queued.
      if (next) settle(next, closedResult(next.cmd, next.tries));
      for (const x of feed.rest()) {
        if (isSource(x)) this.dropSource(x);
        else settle(x, closedResult(x.cmd, x.tries));
      }
    }
  }

  /** One process for `first` and the same-tool commands after it; returns the command taken but not sent, if any. */
  private async sendSegment(first: Pending, feed: Feed): Promise<Pending | undefined> {
    const tool = first.cmd.tool;
    const items: Pending[] = [first];
    let results: LineResult[];
    let next: Pending | undefined;
    let spawnError: string | null = null;
    try {
      const r = await this.streamBatch(tool, items, () => {
        if (items.length >= this.maxBatch || this.closed) return undefined;
        next = feed.take();
        if (!next || next.cmd.tool !== tool) return undefined;
        items.push(next);
        next = undefined;
        return items[items.length - 1]!.cmd.line;
      });
      results = r;
    } catch (e) {
      spawnError = `could not run ${tool}: ${(e as Error).message}`;
      const error = spawnError;
      results = items.map(() => ({ ok: false, error }));
    }
    // When the process could not start, every line failed for that one reason: one warning for them all, not one per line.
    let gaveUp = 0;
    if (spawnError === null) this.repeats.forget(`spawn ${tool}`);
    for (let k = 0; k < items.length; k++) {
      const p = items[k]!;
      const r = results[k]!;
      p.tries++;
      if (r.ok || (p.cmd.absentOk && ABSENT.test(r.error))) {
        this.repeats.forget(p.cmd.line);
        settle(p, { cmd: p.cmd, ok: true, tries: p.tries });
      } else if (p.tries < this.maxRetries && !this.closed) {
        this.counters.retried++;
        const delay = this.retryBaseMs * 2 ** (p.tries - 1);
        log.debug(`retry ${p.tries}/${this.maxRetries - 1} in ${delay} ms: ${tool} ${p.cmd.line}: ${r.error}`);
        this.waitingRetry.add(p);
        const t = setTimeout(() => {
          this.retryTimers.delete(t);
          this.waitingRetry.delete(p);
          this.pending.push(p);
          this.schedule(0);
        }, delay);
        this.retryTimers.add(t);
      } else {
        this.counters.failed++;
        // A command retried again and again (a device the kernel refuses) is reported once per distinct error.
        const msg = `${tool} ${p.cmd.line}: ${r.error} (gave up after ${p.tries} tries)`;
        if (spawnError === null && this.repeats.isNew(p.cmd.line, r.error)) log.warn(msg);
        else log.debug(msg);
        if (spawnError !== null) gaveUp++;
        settle(p, { cmd: p.cmd, ok: false, error: r.error, tries: p.tries });
      }
    }
    if (gaveUp > 0) {
      const msg = `${spawnError}: ${gaveUp} command${gaveUp === 1 ? "" : "s"} gave up after ${this.maxRetries} tries (more for this reason are logged at debug level until ${tool} starts again)`;
      if (this.repeats.isNew(`spawn ${tool}`, spawnError!)) log.warn(msg);
      else log.debug(msg);
    }
    return next;
  }

  /**
   * The first process for `items[0]` and the lines `more()` hands out (it pushes each onto `items`), streamed to its
   * stdin; lines an aborted process left unknown are run again in probe processes. One result per item. Throws if
   * the process cannot be started (after taking every line `more()` has, so they all fail with that error).
   */
  private async streamBatch(tool: Tool, items: Pending[], more: () => string | undefined): Promise<LineResult[]> {
    this.counters.batches++;
    processesSpawned.count++;
    let proc: Bun.Subprocess<"pipe", "ignore", "pipe">;
    try {
      proc = spawnBatchProcess(tool, this.ns, "pipe");
    } catch (e) {
      while (more() !== undefined);
      throw e;
    }
    const stderrText = new Response(proc.stderr).text(); // read while writing: a full stderr pipe would block ip
    let broken = false; // the process went away (aborted): nothing more is written or pulled
    const write = async (text: string): Promise<void> => {
      try {
        const w = proc.stdin.write(text);
        if (typeof w !== "number") await w; // backpressure: ip is behind, let it read
      } catch {
        broken = true;
      }
    };
    const chunk: string[] = [items[0]!.cmd.line];
    for (let line = more(); line !== undefined; line = more()) {
      chunk.push(line);
      if (chunk.length < CHUNK_LINES) continue;
      await write(`${chunk.join("\n")}\n`);
      chunk.length = 0;
      if (broken) break;
    }
    if (chunk.length && !broken) await write(`${chunk.join("\n")}\n`);
    try {
      await proc.stdin.end();
    } catch {
      broken = true;
    }
    const r = parseBatch(tool, await stderrText, await proc.exited, items.length, false);
    if (r.settled >= items.length) {
      this.counters.sent += items.length;
      return fill(r.results, items.length);
    }
    // Aborted: the lines it got to are known; the rest go through probe runs.
    const out = fill(r.results, r.settled);
    this.counters.sent += r.settled;
    const tail = await this.probeBatch(
      tool,
      items.slice(r.settled).map((p) => p.cmd.line),
    );
    for (let k = 0; k < tail.length; k++) out.push(tail[k]!);
    return out;
  }

  /** Lines an aborted process left unknown, each followed by a marker, until every one has a result. */
  private async probeBatch(tool: Tool, lines: string[]): Promise<LineResult[]> {
    const out: LineResult[] = new Array(lines.length);
    let start = 0;
    // Bounded: each probe run settles at least one more line (the one that aborted it fails).
    while (start < lines.length) {
      const part = start === 0 ? lines : lines.slice(start);
      const r = await this.spawnBatch(tool, part, true);
      for (let k = 0; k < r.settled; k++) out[start + k] = r.results[k] ?? LINE_OK;
      if (r.settled >= part.length) break;
      out[start + r.settled] = { ok: false, error: r.abortError || `${tool} exited early` };
      start += r.settled + 1;
    }
    this.counters.sent += lines.length;
    return out;
  }

  /**
   * One process. `settled` = how many leading lines have a known outcome (failures in `results`, the rest succeeded).
   * If the process aborted, lines from `settled` on are unknown; in probe mode line `settled` is the one that aborted.
   */
  private async spawnBatch(
    tool: Tool,
    lines: string[],
    probe: boolean,
  ): Promise<{ results: (LineResult | undefined)[]; settled: number; abortError: string }> {
    const text = probe ? lines.map((l) => `${l}\n${MARKER}\n`).join("") : `${lines.join("\n")}\n`;
    this.counters.batches++;
    processesSpawned.count++;
    const proc = spawnBatchProcess(tool, this.ns, Buffer.from(text));
    const stderr = await new Response(proc.stderr).text();
    return parseBatch(tool, stderr, await proc.exited, lines.length, probe);
  }
}

/** `ip|bridge [-n ns] -force -batch -` reading `stdin` (a pipe to write, or the whole text). */
function spawnBatchProcess<In extends "pipe" | Buffer>(tool: Tool, ns: string[], stdin: In): Bun.Subprocess<In, "ignore", "pipe"> {
  return Bun.spawn([tool, ...ns, "-force", "-batch", "-"], {
    stdin,
    stdout: "ignore",
    stderr: "pipe",
    env: process.env, // without it Bun passes the start-up environment, NOTIFY_SOCKET included (systemd-notify.ts)
  });
}

/**
 * A batch process's outcome from its stderr and exit status, for `count` lines sent (probe: each followed by a marker).
 * `settled` = how many leading lines have a known outcome (failures in `results`, the rest succeeded). If the process
 * aborted, lines from `settled` on are unknown; in probe mode line `settled` is the one that aborted.
 */
function parseBatch(
  tool: Tool,
  stderr: string,
  code: number,
  count: number,
  probe: boolean,
): { results: (LineResult | undefined)[]; settled: number; abortError: string } {
  const aborted = code !== 0 && code !== 1;
  const results: (LineResult | undefined)[] = [];
  let msg: string[] = [];
  let lastReported = 0; // 1-based line number in the text sent
  for (const l of stderr.split("\n")) {
    const m = FAILED.exec(l);
    if (!m) {
      if (l.trim()) msg.push(l.trim());
      continue;
    }
    const n = Number(m[1]);
    lastReported = Math.max(lastReported, n);
    if (!probe) results[n - 1] = { ok: false, error: msg.join("; ") || "failed" };
    else if (n % 2 === 1) results[(n - 1) / 2] = { ok: false, error: msg.join("; ") || "failed" };
    msg = [];
  }
  const abortError = msg.join("; ") || `${tool} exited with status ${code}`;
  if (!aborted) return { results, settled: count, abortError };
  // Aborted: everything up to the last reported line was run. In probe mode a reported marker 2k means real
  // lines 1..k ran; the next real line is the one that killed the process.
  const settled = probe ? Math.floor(lastReported / 2) : lastReported;
  return { results, settled: Math.min(settled, count), abortError };
}

/** The first `n` results, a missing one meaning success. */
function fill(results: (LineResult | undefined)[], n: number): LineResult[] {
  const out: LineResult[] = new Array(n);
  for (let k = 0; k < n; k++) out[k] = results[k] ?? LINE_OK;
  return out;
}

const closedResult = (cmd: Command, tries: number): CommandResult => ({ cmd, ok: false, error: "command queue closed", tries });

/** Every command left in `iter`, failed as "closed", appended to `out`. */
function drainClosed(iter: Iterator<Command>, out: CommandResult[]): CommandResult[] {
  for (let r = iter.next(); !r.done; r = iter.next()) out.push(closedResult(r.value, 0));
  return out;
}

/**
 * The queue's contents for one flush, in order: single commands (run(), retries) and runAll() sources, pulled one
 * command at a time. A source that throws rejects its runAll() and is dropped (what it produced so far still runs).
 */
class Feed {
  private i = 0;
  constructor(private readonly items: (Pending | Source)[]) {}

  take(): Pending | undefined {
    while (this.i < this.items.length) {
      const x = this.items[this.i]!;
      if (!isSource(x)) {
        this.i++;
        return x;
      }
      const cmd = this.pull(x);
      if (cmd) {
        const g = x.group;
        g.left++;
        return { cmd, tries: 0, group: g, index: g.results.push(UNSETTLED) - 1 };
      }
      this.i++;
    }
    return undefined;
  }

  /** What was not taken (the source being pulled included, if it has more). */
  rest(): (Pending | Source)[] {
    return this.items.slice(this.i);
  }

  private pull(s: Source): Command | undefined {
    const g = s.group;
    if (g.sealed) return undefined;
    if (s.head) {
      const h = s.head;
      s.head = undefined;
      return h;
    }
    try {
      const r = s.iter.next();
      if (!r.done) return r.value;
    } catch (e) {
      g.sealed = true;
      g.reject(e);
      return undefined;
    }
    g.sealed = true;
    if (g.left === 0) g.resolve(g.results);
    return undefined;
  }
}

/** `ip [-n ns] -json <args>` parsed; throws with ip's stderr on failure. */
export async function ipJson(args: string[], netns?: string): Promise<unknown> {
  return runJson("ip", args, netns);
}

/** `bridge [-n ns] -json <args>` parsed; throws with bridge's stderr on failure. */
export async function bridgeJson(args: string[], netns?: string): Promise<unknown> {
  return runJson("bridge", args, netns);
}

async function runJson(tool: Tool, args: string[], netns?: string): Promise<unknown> {
  for (const a of args) if (typeof a !== "string") throw new Error(`${tool} argument is not a string: ${String(a)}`);
  processesSpawned.count++;
  const proc = Bun.spawn([tool, ...nsArgs(netns), "-json", ...args], { stdout: "pipe", stderr: "pipe", env: process.env });
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  if (code !== 0) throw new Error(`${tool} -json ${args.join(" ")}: ${err.trim() || `exit status ${code}`}`);
  const s = out.trim();
  if (!s) return [];
  try {
    return JSON.parse(s);
  } catch (e) {
    throw new Error(`${tool} -json ${args.join(" ")}: unparsable output: ${(e as Error).message}`);
  }
}
