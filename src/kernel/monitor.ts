// The long-lived kernel watchers: one `ip -o monitor label link address route neigh [nexthop]` and one `bridge monitor fdb`,
// whose lines become KernelEvents for the reconciler. Each is started and stopped by its own PID; one that dies is
// restarted with backoff, and since events may have been missed meanwhile, onRestart lets the owner re-read the kernel.
import { type KernelEvent, parseFdbMonitorLine, parseIpMonitorLine } from "./monitor-events.ts";
import { nsArgs, processesSpawned } from "./queue.ts";
import { logger } from "../log.ts";

// Through log.ts: a tagged instance made at import time would keep consola's default reporter, not the agent's.
const log = logger("monitor");

export interface MonitorOptions {
  netns?: string;
  /** Also watch nexthop objects (only where the kernel has them: an older one refuses the group). */
  nexthops?: boolean;
  onEvents: (events: KernelEvent[]) => void;
  /** A watcher came back after dying: events may have been lost. */
  onRestart: () => void;
  /** First restart delay; doubles up to maxBackoffMs, and starts over after a watcher lived STABLE_MS. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

const STABLE_MS = 30_000;
/** Longer lines are not iproute2 output we understand; dropped whole. */
const MAX_LINE = 16_384;

export class KernelMonitor {
  private readonly watchers: Watcher[];

  constructor(opts: MonitorOptions) {
    const ns = nsArgs(opts.netns);
    this.watchers = [
      new Watcher(
        ["ip", ...ns, "-o", "monitor", "label", "link", "address", "route", "neigh", ...(opts.nexthops ? ["nexthop"] : [])],
        parseIpMonitorLine,
        opts,
      ),
      new Watcher(["bridge", ...ns, "monitor", "fdb"], parseFdbMonitorLine, opts),
    ];
  }

  start(): void {
    for (const w of this.watchers) w.start();
  }

  stop(): void {
    for (const w of this.watchers) w.stop();
  }

  /** PIDs of the running watchers. */
  pids(): number[] {
    return this.watchers.map((w) => w.pid).filter((p): p is number => p !== null);
  }
}

class Watcher {
  private proc: ReturnType<typeof Bun.spawn> | null = null;
  private stopped = true;
  private backoffMs: number;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private startedAt = 0;
  private restarts = 0;

  constructor(
    private readonly argv: string[],
    private readonly parse: (line: string) => KernelEvent | null,
    private readonly opts: MonitorOptions,
  ) {
    this.backoffMs = opts.minBackoffMs ?? 250;
  }

  get pid(): number | null {
    return this.proc?.pid ?? null;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.spawn();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const p = this.proc;
    this.proc = null;
    if (p && p.exitCode === null) process.kill(p.pid, "SIGTERM");
  }

  private spawn(): void {
    let proc: ReturnType<typeof Bun.spawn>;
    try {
      processesSpawned.count++;
      proc = Bun.spawn(this.argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: process.env });
    } catch (e) {
      this.died(`could not start: ${(e as Error).message}`);
      return;
    }
    this.proc = proc;
    this.startedAt = Date.now();
    if (this.restarts++ > 0) this.opts.onRestart();
    const stderr = new Response(proc.stderr as ReadableStream).text().catch(() => "");
    this.read(proc.stdout as ReadableStream<Uint8Array>)
      .catch(() => undefined)
      .then(async () => {
        const code = await proc.exited;
        if (this.proc !== proc) return; // stopped (or replaced) on purpose
        this.proc = null;
        const err = (await stderr).trim().slice(0, 200);
        this.died(`exited with status ${code}${err ? `: ${err}` : ""}`);
      });
  }

  private died(why: string): void {
    if (this.stopped) return;
    if (Date.now() - this.startedAt >= STABLE_MS) this.backoffMs = this.opts.minBackoffMs ?? 250;
    log.warn(`${this.argv[0]} monitor ${why}; restarting in ${this.backoffMs} ms`);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.stopped) this.spawn();
    }, this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, this.opts.maxBackoffMs ?? 10_000);
  }

  private async read(stream: ReadableStream<Uint8Array>): Promise<void> {
    const dec = new TextDecoder();
    let partial = "";
    for await (const chunk of stream) {
      const text = partial + dec.decode(chunk, { stream: true });
      const lines = text.split("\n");
      partial = lines.pop() ?? "";
      if (partial.length > MAX_LINE) partial = ""; // not a line we could parse; drop it
      const events: KernelEvent[] = [];
      for (const l of lines) {
        if (l.length > MAX_LINE) continue;
        const ev = this.parse(l);
        if (ev) events.push(ev);
      }
      if (events.length && !this.stopped) this.opts.onEvents(events);
    }
  }
}
