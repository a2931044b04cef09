// The only place that runs iproute2. Commands queued within a short window are written to ONE `ip -force -batch -`
// (or `bridge -force -batch -`) process per run of same-tool commands: starting a process costs ~100x the kernel work
// of one route (field-notes §3.3), a batch costs ~10 µs per line.
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
  /** Most lines per process. Default 5000. */
  maxBatch?: number;
  /** Most tries per command (first try included). Default 5. */
  maxRetries?: number;
  /** First retry delay; doubles per retry. Default 100 ms. */
  retryBaseMs?: number;
}

/** Results of one run()/runAll() call: a single promise however many commands (10,000 promises cost real time). */
interface Group {
  results: CommandResult[];
  left: number;
  resolve: (r: CommandResult[]) => void;
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
  if (--g.left === 0) g.resolve(g.results);
}

type LineResult = { ok: true } | { ok: false; error: string };
const LINE_OK: LineResult = { ok: true };

const NETNS = /^[A-Za-z0-9._-]{1,64}$/;
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
  private pending: Pending[] = [];
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
    this.maxBatch = Math.max(1, opts.maxBatch ?? 5000);
    this.maxRetries = Math.max(1, opts.maxRetries ?? 5);
    this.retryBaseMs = opts.retryBaseMs ?? 100;
  }

  /** Queues one command; resolves with its own result (never rejects for a kernel error). */
  async run(cmd: Command): Promise<CommandResult> {
    const p = this.enqueue([cmd]);
    this.schedule(this.pending.length >= this.maxBatch ? 0 : this.windowMs);
    return (await p)[0]!;
  }

  /** Queues commands in order and sends them at once (no window wait): the caller has already batched them. */
  runAll(cmds: Command[]): Promise<CommandResult[]> {
    const p = this.enqueue(cmds);
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
    for (const p of dropped) settle(p, { cmd: p.cmd, ok: false, error: "command queue closed", tries: p.tries });
  }

  private enqueue(cmds: Command[]): Promise<CommandResult[]> {
    if (this.closed) return Promise.resolve(cmds.map((cmd) => ({ cmd, ok: false, error: "command queue closed", tries: 0 })));
    if (cmds.length === 0) return Promise.resolve([]);
    return new Promise((resolve) => {
      const group: Group = { results: new Array(cmds.length), left: cmds.length, resolve };
      for (let i = 0; i < cmds.length; i++) this.pending.push({ cmd: cmds[i]!, tries: 0, group, index: i });
    });
  }

  private schedule(delayMs: number): void {
    if (this.closed || this.running) return; // a running flush loop picks up whatever is pending
    if (this.timer) {
      if (delayMs > 0) return;
      clearTimeout(this.timer);
    }
    this.timer = setTimeout(() => {
      this.timer = null;
      this.running = this.flushLoop().finally(() => {
        this.running = null;
        if (this.pending.length) this.schedule(0);
      });
    }, delayMs);
  }

  private async flushLoop(): Promise<void> {
    while (this.pending.length && !this.closed) {
      const batch = this.pending.splice(0, this.pending.length);
      // Phases in queue order: split where the tool changes (ordering across ip/bridge) or at maxBatch.
      let i = 0;
      while (i < batch.length) {
        const tool = batch[i]!.cmd.tool;
        let j = i + 1;
        while (j < batch.length && j - i < this.maxBatch && batch[j]!.cmd.tool === tool) j++;
        await this.sendSegment(tool, batch.slice(i, j));
        i = j;
      }
    }
  }

  private async sendSegment(tool: Tool, items: Pending[]): Promise<void> {
    const lines = items.map((p) => p.cmd.line);
    let results: LineResult[];
    try {
      results = await this.execBatch(tool, lines);
    } catch (e) {
      const error = `could not run ${tool}: ${(e as Error).message}`;
      results = lines.map(() => ({ ok: false, error }));
    }
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
        if (this.repeats.isNew(p.cmd.line, r.error)) log.warn(msg);
        else log.debug(msg);
        settle(p, { cmd: p.cmd, ok: false, error: r.error, tries: p.tries });
      }
    }
  }

  /** Runs lines through as few processes as possible and returns one result per line. */
  private async execBatch(tool: Tool, lines: string[]): Promise<LineResult[]> {
    const out: LineResult[] = new Array(lines.length);
    let start = 0;
    let probe = false;
    // Bounded: a normal run is followed by probe runs, and each probe run settles at least one more line.
    while (start < lines.length) {
      const part = start === 0 ? lines : lines.slice(start);
      const r = await this.spawnBatch(tool, part, probe);
      for (let k = 0; k < r.settled; k++) out[start + k] = r.results[k] ?? LINE_OK;
      if (r.settled >= part.length) break;
      if (probe) {
        out[start + r.settled] = { ok: false, error: r.abortError || `${tool} exited early` };
        start += r.settled + 1;
      } else {
        start += r.settled;
        probe = true;
      }
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
    const proc = Bun.spawn([tool, ...this.ns, "-force", "-batch", "-"], {
      stdin: Buffer.from(text),
      stdout: "ignore",
      stderr: "pipe",
      env: process.env, // without it Bun passes the start-up environment, NOTIFY_SOCKET included (systemd-notify.ts)
    });
    const stderr = await new Response(proc.stderr).text();
    const code = await proc.exited;
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
    if (!aborted) return { results, settled: lines.length, abortError };
    // Aborted: everything up to the last reported line was run. In probe mode a reported marker 2k means real
    // lines 1..k ran; the next real line is the one that killed the process.
    const settled = probe ? Math.floor(lastReported / 2) : lastReported;
    return { results, settled: Math.min(settled, lines.length), abortError };
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
