// A long-lived child that reports changes line by line (`ip monitor`, `bridge monitor fdb`, `nft monitor rules`):
// spawned with the agent's current environment (NOTIFY_SOCKET removed) and a parent-death signal, its stdout split
// into bounded lines, restarted with backoff when it dies (the backoff starts over once it lived stableMs), killed by
// its own PID on stop. The kernel monitor and the traffic-rules watchers are both one of these; each says what its
// lines mean and what a death means to it.
import { have } from "./rules/exec.ts";

/** Characters of a line kept by default; the rest of a longer line is dropped, its head says enough. */
export const LINE_HEAD_MAX = 1024;

export interface MonitorLine {
  text: string;
  /** The line was longer than the splitter's limit and `text` is its head. */
  truncated: boolean;
}

/** Splits a byte stream into lines, keeping at most `max` characters of each (memory stays bounded). */
export class LineSplitter {
  private head = "";
  private truncated = false;
  private readonly dec = new TextDecoder();

  constructor(private readonly max = LINE_HEAD_MAX) {}

  push(chunk: Uint8Array): MonitorLine[] {
    const text = this.dec.decode(chunk, { stream: true });
    const out: MonitorLine[] = [];
    let start = 0;
    while (start <= text.length) {
      const nl = text.indexOf("\n", start);
      const end = nl === -1 ? text.length : nl;
      const room = this.max - this.head.length;
      if (end - start > room) this.truncated = true;
      if (room > 0) this.head += text.slice(start, start + Math.min(room, end - start));
      if (nl === -1) break;
      out.push({ text: this.head, truncated: this.truncated });
      this.head = "";
      this.truncated = false;
      start = nl + 1;
    }
    return out;
  }
}

/**
 * The command, made to get SIGTERM when the agent dies without stopping it (SIGKILL, a crash): a monitor writes only
 * when something changes, so on a quiet host it would otherwise outlive the agent for good. util-linux's setpriv
 * sets the parent-death signal and execs the command (same PID); without setpriv the command runs as it is.
 */
export function diesWithUs(argv: string[]): string[] {
  return have("setpriv") ? ["setpriv", "--pdeathsig", "TERM", ...argv] : argv;
}

export interface SupervisedOptions {
  argv: string[];
  /** Most characters kept of one line (default LINE_HEAD_MAX). */
  maxLine?: number;
  /** The lines of one chunk of output, in order. */
  onLines: (lines: MonitorLine[]) => void;
  /** Each process started (after the first: a restart). */
  onSpawn?: (proc: ReturnType<typeof Bun.spawn>, restart: boolean) => void;
  /** It died (or could not be started) while wanted; it is started again in `retryMs`. */
  onDied: (why: string, retryMs: number) => void;
  minBackoffMs: number;
  maxBackoffMs: number;
  /** A process that lived this long starts the backoff over. */
  stableMs: number;
}

export class SupervisedProcess {
  private current: ReturnType<typeof Bun.spawn> | null = null;
  private stopped = true;
  private backoffMs: number;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private startedAt = 0;
  private spawned = 0;

  constructor(private readonly o: SupervisedOptions) {
    this.backoffMs = o.minBackoffMs;
  }

  /** The running process, if any. */
  get proc(): ReturnType<typeof Bun.spawn> | null {
    return this.current;
  }

  get pid(): number | null {
    return this.current?.pid ?? null;
  }

  /** Still wanted (started and not stopped). */
  get running(): boolean {
    return !this.stopped;
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
    const p = this.current;
    this.current = null;
    if (p && p.exitCode === null) process.kill(p.pid, "SIGTERM");
  }

  private spawn(): void {
    let proc: ReturnType<typeof Bun.spawn>;
    try {
      // env: process.env, not the start-up environment Bun would pass (NOTIFY_SOCKET is removed from it at start).
      proc = Bun.spawn(diesWithUs(this.o.argv), { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: process.env });
    } catch (e) {
      this.died(`could not be started: ${(e as Error).message}`);
      return;
    }
    this.current = proc;
    this.startedAt = Date.now();
    this.o.onSpawn?.(proc, this.spawned++ > 0);
    const stderr = new Response(proc.stderr as ReadableStream).text().catch(() => "");
    this.read(proc.stdout as ReadableStream<Uint8Array>)
      .catch(() => undefined)
      .then(async () => {
        const code = await proc.exited;
        if (this.current !== proc) return; // stopped (or replaced) on purpose
        this.current = null;
        const err = (await stderr).trim().slice(0, 300);
        this.died(`exited with status ${code}${err ? `: ${err}` : ""}`);
      });
  }

  private died(why: string): void {
    if (this.stopped) return;
    if (Date.now() - this.startedAt >= this.o.stableMs) this.backoffMs = this.o.minBackoffMs;
    const retryMs = this.backoffMs;
    this.o.onDied(why, retryMs);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.stopped) this.spawn();
    }, retryMs);
    this.backoffMs = Math.min(this.backoffMs * 2, this.o.maxBackoffMs);
  }

  private async read(stream: ReadableStream<Uint8Array>): Promise<void> {
    const split = new LineSplitter(this.o.maxLine);
    for await (const chunk of stream) {
      if (this.stopped) return;
      const lines = split.push(chunk);
      if (lines.length) this.o.onLines(lines);
    }
  }
}
