// The only place that runs iproute2. Commands queued within a short window are written to ONE `ip -force -batch -`
// (or `bridge -force -batch -`) process per run of same-tool commands: starting a process costs ~100x the kernel work
// of one route (field-notes §3.3), a batch costs ~10 µs per line. The process is kept for the next runs while they
// come (keepAliveMs: a join storm's peers arrive 100-600 ms apart), each run ending in a marker line whose
// `Command failed -:N` report on stderr (unbuffered) says every line before it is done; an idle agent keeps none.
//
// runAll() takes an iterable and pulls it lazily: the process is started with the first command and lines are
// written to its stdin in chunks as they are produced, so the caller's planning (a generator) overlaps the kernel's
// work instead of preceding it.
//
// iproute2 6.1 batch behaviour this relies on (checked by hand and by test/kernel/queue.test.ts):
// - with -force it keeps going past a failing line and prints the error text, then `Command failed -:N` (N = 1-based
//   line number) on stderr; exit status 1 if anything failed;
// - BUT `ip neigh` calls exit(2) when the kernel rejects the request (e.g. deleting an absent entry), and argument
//   errors call exit(255): the rest of the batch is silently not run. We detect that from the process ending before
//   the run's marker is reported, and re-run the unknown tail in "probe" mode, where a marker line (an unknown
//   object, rejected in user space without touching the kernel) follows every command, so the marker reports tell
//   exactly how far the process got;
// - iproute2 caches device name -> index: a kept process is retired after a run with a `link` line or a failed line,
//   and when a device is deleted (linksChanged()), so a recreated device is never addressed by its old index.
import type { Command, Tool } from "./commands.ts";
import { logger, RepeatFilter } from "../log.ts";
import { endChild, writeChild } from "../child-stdin.ts";

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
  /** Batch runs: runs of same-tool commands, each in one process (a kept one or a new one). */
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
  /** How long a batch process is kept for the next run after one ends; 0 = a process per run. Default 2,000 ms. */
  keepAliveMs?: number;
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
// A kept process is retired after this many lines (a bound on whatever iproute2 keeps per command).
const MAX_KEPT_LINES = 1_000_000;
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
  private readonly keepAliveMs: number;
  /** The kept batch process of each tool, if any. */
  private readonly kept: Partial<Record<Tool, BatchProcess>> = {};
  /** Counts linksChanged() calls: a process taken for a run before one is not kept after it. */
  private linkEpoch = 0;
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
    this.keepAliveMs = Math.max(0, opts.keepAliveMs ?? 2000);
  }

  /** A device was deleted: kept processes may hold its old index, so none is used again. */
  linksChanged(): void {
    this.linkEpoch++;
    for (const t of ["ip", "bridge"] as const) this.retire(t);
  }

  private retire(tool: Tool): void {
    const bp = this.kept[tool];
    if (!bp) return;
    delete this.kept[tool];
    bp.retire(); // idle: a process in a run is not in `kept`
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
    this.linksChanged();
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
   * One run: `items[0]` and the lines `more()` hands out (it pushes each onto `items`), streamed to the kept process
   * of `tool` (or a new one), then a marker line; lines an aborted process left unknown are run again in probe
   * processes. One result per item. Throws if a process cannot be started (after taking every line `more()` has, so
   * they all fail with that error).
   */
  private async streamBatch(tool: Tool, items: Pending[], more: () => string | undefined): Promise<LineResult[]> {
    this.counters.batches++;
    const epoch = this.linkEpoch;
    // Taken for this run (nothing else writes to it meanwhile), or a new one.
    let bp = this.kept[tool];
    if (bp) delete this.kept[tool];
    else {
      try {
        bp = new BatchProcess(tool, this.ns);
      } catch (e) {
        while (more() !== undefined);
        throw e;
      }
    }
    bp.busy();
    const first = bp.lines + 1; // iproute2's line number of items[0]
    const chunk: string[] = [items[0]!.cmd.line];
    for (let line = more(); line !== undefined; line = more()) {
      chunk.push(line);
      if (chunk.length < CHUNK_LINES) continue;
      await bp.write(chunk);
      chunk.length = 0;
      if (bp.broken) break;
    }
    if (chunk.length && !bp.broken) await bp.write(chunk);
    const reached = await bp.finish();
    const r = bp.take(first, reached ? items.length : Math.min(Math.max(0, bp.reported - first + 1), items.length));
    if (reached && this.mayKeep(tool, epoch, bp, r.failed, items)) this.keep(tool, bp);
    else bp.retire();
    this.counters.sent += r.results.length;
    if (reached) return r.results;
    // Aborted: the lines it got to are known; the rest go through probe runs.
    const out = r.results;
    const tail = await this.probeBatch(
      tool,
      items.slice(out.length).map((p) => p.cmd.line),
    );
    for (let k = 0; k < tail.length; k++) out.push(tail[k]!);
    return out;
  }

  /**
   * Keeps `bp` for the next run until it has been idle keepAliveMs. Not inline in streamBatch: a closure made in an
   * async function keeps that function's whole frame (the run's items and results, ~15 MB at 10k peers) reachable,
   * and an idle agent does not collect again after the timer lets go of it.
   */
  private keep(tool: Tool, bp: BatchProcess): void {
    this.kept[tool] = bp;
    bp.idle(this.keepAliveMs, () => {
      if (this.kept[tool] === bp) delete this.kept[tool];
    });
  }

  /**
   * Whether a process that finished a run is kept: not after a failed line or a `link` line (iproute2's cached device
   * indexes may be stale), not after a device deletion during the run, and only while no other is kept.
   */
  private mayKeep(tool: Tool, epoch: number, bp: BatchProcess, failed: boolean, items: Pending[]): boolean {
    if (this.closed || this.keepAliveMs === 0 || failed || epoch !== this.linkEpoch) return false;
    if (this.kept[tool] || bp.lines >= MAX_KEPT_LINES) return false;
    for (const p of items) if (p.cmd.line.startsWith("link ")) return false;
    return true;
  }

  /** Lines an aborted process left unknown, each followed by a marker, until every one has a result. */
  private async probeBatch(tool: Tool, lines: string[]): Promise<LineResult[]> {
    const out: LineResult[] = new Array(lines.length);
    let start = 0;
    // Bounded: each probe run settles at least one more line (the one that aborted it fails).
    while (start < lines.length) {
      const part = start === 0 ? lines : lines.slice(start);
      const r = await this.spawnProbe(tool, part);
      for (let k = 0; k < r.settled; k++) out[start + k] = r.results[k] ?? LINE_OK;
      if (r.settled >= part.length) break;
      out[start + r.settled] = { ok: false, error: r.abortError || `${tool} exited early` };
      start += r.settled + 1;
    }
    this.counters.sent += lines.length;
    return out;
  }

  /** One probe process: each line followed by a marker (parseProbe). */
  private async spawnProbe(tool: Tool, lines: string[]): Promise<ReturnType<typeof parseProbe>> {
    const text = lines.map((l) => `${l}\n${MARKER}\n`).join("");
    this.counters.batches++;
    processesSpawned.count++;
    const proc = spawnBatchProcess(tool, this.ns, Buffer.from(text));
    const stderr = await new Response(proc.stderr).text();
    return parseProbe(tool, stderr, await proc.exited, lines.length);
  }
}

/**
 * A `tool -force -batch -` process fed run after run. Each run ends in a marker line; its `Command failed -:N` report
 * (stderr is unbuffered, lines run in order) means every line before it has run, their failures reported before it.
 */
class BatchProcess {
  private readonly proc: Bun.Subprocess<"pipe", "ignore", "pipe">;
  /** Lines written so far (iproute2 numbers them from 1 for the process's life). */
  lines = 0;
  /** The highest line number reported failed: when the process aborts, the lines after it are unknown. */
  reported = 0;
  /** A write failed: the process is gone. */
  broken = false;
  private readonly failures = new Map<number, string>();
  private readonly reports = new FailureReports((n, error) => this.onReport(n, error));
  private marker = 0;
  private markerSeen = false;
  private onMarker: ((reached: boolean) => void) | null = null;
  private readonly stderrDone: Promise<void>;
  private idleTimer: ReturnType<typeof setTimeout> | null = null;
  private retired = false;

  constructor(tool: Tool, ns: string[]) {
    processesSpawned.count++;
    this.proc = spawnBatchProcess(tool, ns, "pipe");
    this.stderrDone = this.readStderr();
  }

  /** Writes lines (each counted) and flushes them to the process. */
  async write(chunk: string[]): Promise<void> {
    this.lines += chunk.length;
    // Waits while ip is behind (backpressure), so it reads before more is made.
    if (!(await writeChild(this.proc.stdin, `${chunk.join("\n")}\n`))) this.broken = true;
  }

  /** Ends the run with a marker: true once its report came, false if the process ended first. */
  async finish(): Promise<boolean> {
    if (!this.broken) {
      this.marker = this.lines + 1;
      this.markerSeen = false;
      await this.write([MARKER]);
    }
    if (this.markerSeen) return true;
    if (!this.broken && (await new Promise<boolean>((resolve) => (this.onMarker = resolve)))) return true;
    await this.stderrDone; // every report the process made is read before its results are taken
    return false;
  }

  /** Results of lines first..first+count-1 (a missing report means success); forgets the failures it had. */
  take(first: number, count: number): { results: LineResult[]; failed: boolean } {
    const results: LineResult[] = new Array(count);
    let failed = false;
    for (let k = 0; k < count; k++) {
      const e = this.failures.size ? this.failures.get(first + k) : undefined;
      if (e === undefined) results[k] = LINE_OK;
      else {
        results[k] = { ok: false, error: e };
        failed = true;
      }
    }
    this.failures.clear();
    return { results, failed };
  }

  busy(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
  }

  /** Retires the process after `ms` without a run; `onIdle` first (the queue forgets it). */
  idle(ms: number, onIdle: () => void): void {
    this.busy();
    this.idleTimer = setTimeout(() => {
      this.idleTimer = null;
      onIdle();
      this.retire();
    }, ms);
  }

  /** Ends its input: it exits once it has run what it got (and is reaped then). */
  retire(): void {
    this.busy();
    if (this.retired) return;
    this.retired = true;
    void endChild(this.proc.stdin);
  }

  private async readStderr(): Promise<void> {
    const dec = new TextDecoder();
    let buf = "";
    try {
      for await (const chunk of this.proc.stderr) {
        buf += dec.decode(chunk, { stream: true });
        let i = buf.indexOf("\n");
        while (i >= 0) {
          this.reports.line(buf.slice(0, i));
          buf = buf.slice(i + 1);
          i = buf.indexOf("\n");
        }
      }
    } catch {
      // the pipe broke: the process is gone either way
    }
    if (buf) this.reports.line(buf);
    this.broken = true;
    const f = this.onMarker;
    this.onMarker = null;
    f?.(false);
  }

  private onReport(n: number, error: string): void {
    if (n > this.reported) this.reported = n;
    if (n !== this.marker) {
      this.failures.set(n, error);
      return;
    }
    this.markerSeen = true;
    const f = this.onMarker;
    this.onMarker = null;
    f?.(true);
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
 * A probe process's outcome from its stderr and exit status, for `count` lines sent, each followed by a marker.
 * `settled` = how many leading lines have a known outcome (failures in `results`, the rest succeeded). If the process
 * aborted, line `settled` is the one that aborted it.
 */
function parseProbe(
  tool: Tool,
  stderr: string,
  code: number,
  count: number,
): { results: (LineResult | undefined)[]; settled: number; abortError: string } {
  const results: (LineResult | undefined)[] = [];
  let lastReported = 0; // 1-based line number in the text sent
  const reports = new FailureReports((n, error) => {
    lastReported = Math.max(lastReported, n);
    if (n % 2 === 1) results[(n - 1) / 2] = { ok: false, error }; // even numbers are markers
  });
  for (const l of stderr.split("\n")) reports.line(l);
  const abortError = reports.rest() || `${tool} exited with status ${code}`;
  if (code === 0 || code === 1) return { results, settled: count, abortError };
  // Aborted: a reported marker 2k means lines 1..k ran; the next line is the one that killed the process.
  return { results, settled: Math.min(Math.floor(lastReported / 2), count), abortError };
}

/** iproute2's batch stderr, line by line: each `Command failed -:N` handed over with N and the error text before it. */
class FailureReports {
  private msg: string[] = [];
  constructor(private readonly onReport: (n: number, error: string) => void) {}

  line(l: string): void {
    const m = FAILED.exec(l);
    if (!m) {
      const t = l.trim();
      if (t) this.msg.push(t);
      return;
    }
    const error = this.msg.join("; ") || "failed";
    this.msg = [];
    this.onReport(Number(m[1]), error);
  }

  /** Text after the last report (an aborting process's last words), or "". */
  rest(): string {
    return this.msg.join("; ");
  }
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
