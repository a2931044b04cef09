// One long-lived change watcher (`nft monitor rules`, `ip -4 -o monitor route`): a SupervisedProcess (bounded lines,
// killed by its own PID on stop, restarted with backoff). It counts as watching only once the kernel has subscribed it
// (a netlink socket of its own with multicast groups, read from /proc: no process), so nothing that changed before
// that can be missed unnoticed. A death is logged once per outage.

import { readFileSync, readdirSync, readlinkSync } from "node:fs";
import type { ConsolaInstance } from "consola";
import { escapeLogText } from "../log-text.ts";
import { type MonitorLine, SupervisedProcess } from "../supervised-process.ts";

export interface WatcherOptions {
  /** For the log: "nft monitor rules". */
  name: string;
  /** The command, already wrapped for a network namespace if any. */
  argv: string[];
  /** NETLINK_NETFILTER (12) for nft, NETLINK_ROUTE (0) for ip. */
  netlinkProtocol: number;
  onLine: (line: MonitorLine) => void;
  /** Subscribed (true), or died / stopped (false). */
  onState: (watching: boolean) => void;
  /** Each process started. */
  onSpawn: () => void;
  log: ConsolaInstance;
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

/** What TrafficRules needs of a watcher (unit tests pass a scripted one). */
export interface ChangeWatcher {
  readonly name: string;
  readonly alive: boolean;
  /** The running process, if any. */
  readonly pid?: number | null;
  start(): void;
  stop(): void;
}

export const NETLINK_ROUTE = 0;
export const NETLINK_NETFILTER = 12;
const STABLE_MS = 60_000;
// Polled often at first: the first install waits for the subscription before it reads its fix back.
const SUBSCRIBE_FIRST_POLL_MS = 2;
const SUBSCRIBE_POLL_MS = 25;
/** A watcher that has not subscribed by then is taken as watching anyway (the safety net remains). */
const SUBSCRIBE_WAIT_MS = 5_000;

export class Watcher implements ChangeWatcher {
  private readonly p: SupervisedProcess;
  private watching = false;
  /** The outage was logged; the next subscription logs that it is back. */
  private down = false;

  constructor(private readonly o: WatcherOptions) {
    this.p = new SupervisedProcess({
      argv: o.argv,
      minBackoffMs: o.minBackoffMs ?? 500,
      maxBackoffMs: o.maxBackoffMs ?? 60_000,
      stableMs: STABLE_MS,
      onSpawn: (proc) => {
        o.onSpawn();
        void this.awaitSubscription(proc);
      },
      onLines: (lines) => {
        for (const line of lines) o.onLine(line);
      },
      onDied: (why, retryMs) => {
        this.setWatching(false);
        const msg = `traffic rules: ${o.name} ${escapeLogText(why)}; checking every --iptables-resync period until it is back (retrying in ${retryMs} ms)`;
        if (this.down) o.log.debug(msg);
        else o.log.warn(msg);
        this.down = true;
      },
    });
  }

  get name(): string {
    return this.o.name;
  }

  get alive(): boolean {
    return this.watching;
  }

  get pid(): number | null {
    return this.p.pid;
  }

  start(): void {
    this.p.start();
  }

  stop(): void {
    this.p.stop();
    this.setWatching(false);
  }

  private async awaitSubscription(proc: ReturnType<typeof Bun.spawn>): Promise<void> {
    const deadline = Date.now() + SUBSCRIBE_WAIT_MS;
    let poll = SUBSCRIBE_FIRST_POLL_MS;
    while (this.p.proc === proc && proc.exitCode === null && !subscribed(proc.pid, this.o.netlinkProtocol) && Date.now() < deadline) {
      await Bun.sleep(poll);
      poll = Math.min(poll * 2, SUBSCRIBE_POLL_MS);
    }
    if (this.p.proc !== proc || proc.exitCode !== null) return;
    if (this.down) this.o.log.info(`traffic rules: ${this.o.name} is running again; changes are watched`);
    this.down = false;
    this.setWatching(true);
  }

  private setWatching(w: boolean): void {
    if (this.watching === w) return;
    this.watching = w;
    this.o.onState(w);
  }
}

/**
 * Whether `pid` holds a netlink socket of `protocol` that has joined multicast groups: then the kernel delivers it
 * every change from here on. /proc/<pid>/net/netlink is the process's own network namespace.
 */
export function subscribed(pid: number, protocol: number): boolean {
  try {
    const inodes = new Set<string>();
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      const m = /^socket:\[(\d+)\]$/.exec(safeReadlink(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    }
    // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
    return readFileSync(`/proc/${pid}/net/netlink`, "utf8")
      .split("\n")
      .slice(1)
      .some((row) => {
        const c = row.trim().split(/\s+/);
        return Number(c[1]) === protocol && Number.parseInt(c[3] ?? "0", 16) !== 0 && inodes.has(c[9] ?? "");
      });
  } catch {
    return false;
  }
}

function safeReadlink(p: string): string {
  try {
    return readlinkSync(p);
  } catch {
    return "";
  }
}
