// The long-lived kernel watchers: one `ip -o monitor label link address route neigh [nexthop]` and one `bridge monitor fdb`,
// whose lines become KernelEvents for the reconciler. Each is started and stopped by its own PID; one that dies is
// restarted with backoff (src/supervised-process.ts), and since events may have been missed meanwhile, onRestart lets
// the owner re-read the kernel.
import { type KernelEvent, parseFdbMonitorLine, parseIpMonitorLine } from "./monitor-events.ts";
import { nsArgs, processesSpawned } from "./queue.ts";
import { logger } from "../log.ts";
import { escapeLogText } from "../log-text.ts";
import { SupervisedProcess } from "../supervised-process.ts";

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

/** One iproute2 monitor: its lines parsed into events, one onEvents call per chunk of output. */
class Watcher {
  private readonly p: SupervisedProcess;

  constructor(argv: string[], parse: (line: string) => KernelEvent | null, opts: MonitorOptions) {
    this.p = new SupervisedProcess({
      argv,
      maxLine: MAX_LINE,
      minBackoffMs: opts.minBackoffMs ?? 250,
      maxBackoffMs: opts.maxBackoffMs ?? 10_000,
      stableMs: STABLE_MS,
      onSpawn: (_proc, restart) => {
        processesSpawned.count++;
        if (restart) opts.onRestart();
      },
      onLines: (lines) => {
        const events: KernelEvent[] = [];
        for (const l of lines) {
          if (l.truncated) continue; // not iproute2 output we understand; dropped whole
          const ev = parse(l.text);
          if (ev) events.push(ev);
        }
        if (events.length) opts.onEvents(events);
      },
      onDied: (why, retryMs) => log.warn(`${argv[0]} monitor ${escapeLogText(why)}; restarting in ${retryMs} ms`),
    });
  }

  get pid(): number | null {
    return this.p.pid;
  }

  start(): void {
    this.p.start();
  }

  stop(): void {
    this.p.stop();
  }
}
