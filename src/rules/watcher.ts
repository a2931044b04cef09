// One long-lived change watcher (`nft monitor rules`, `ip -4 -o monitor route`): started once, its output read line
// by line (bounded: monitor-lines.ts), killed by its own PID on stop. It counts as watching only once the kernel has
// subscribed it (a netlink socket of its own with multicast groups, read from /proc: no process), so nothing that
// changed before that can be missed unnoticed. One that dies is restarted with backoff and logged once per outage.

import { readFileSync, readdirSync, readlinkSync } from "node:fs";
import type { ConsolaInstance } from "consola";
import { escapeLogText } from "../log-text.ts";
import { have } from "./exec.ts";
import { type MonitorLine, LineSplitter } from "./monitor-lines.ts";

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
const SUBSCRIBE_POLL_MS = 25;
/** A watcher that has not subscribed by then is taken as watching anyway (the safety net remains). */
const SUBSCRIBE_WAIT_MS = 5_000;

export class Watcher implements ChangeWatcher {
  private proc: ReturnType<typeof Bun.spawn> | null = null;
  private stopped = true;
  private watching = false;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private backoffMs: number;
  private startedAt = 0;
  /** The outage was logged; the next subscription logs that it is back. */
  private down = false;

  constructor(private readonly o: WatcherOptions) {
    this.backoffMs = o.minBackoffMs ?? 500;
  }

  get name(): string {
    return this.o.name;
  }

  get alive(): boolean {
    return this.watching;
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
    this.setWatching(false);
    if (p && p.exitCode === null) p.kill("SIGTERM");
  }

  private spawn(): void {
    let proc: ReturnType<typeof Bun.spawn>;
    this.o.onSpawn();
    try {
      // env: process.env, not the start-up environment Bun would pass (NOTIFY_SOCKET is removed from it at start).
      proc = Bun.spawn(diesWithUs(this.o.argv), { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: process.env });
    } catch (e) {
      this.died(`could not be started: ${(e as Error).message}`);
      return;
    }
    this.proc = proc;
    this.startedAt = Date.now();
    void this.awaitSubscription(proc);
    const stderr = new Response(proc.stderr as ReadableStream).text().catch(() => "");
    this.read(proc.stdout as ReadableStream<Uint8Array>)
      .catch(() => undefined)
      .then(async () => {
        const code = await proc.exited;
        if (this.proc !== proc) return; // stopped on purpose
        this.proc = null;
        const err = (await stderr).trim();
        this.died(`exited with status ${code}${err ? `: ${escapeLogText(err)}` : ""}`);
      });
  }

  private async awaitSubscription(proc: ReturnType<typeof Bun.spawn>): Promise<void> {
    const deadline = Date.now() + SUBSCRIBE_WAIT_MS;
    while (this.proc === proc && proc.exitCode === null && !subscribed(proc.pid, this.o.netlinkProtocol) && Date.now() < deadline)
      await Bun.sleep(SUBSCRIBE_POLL_MS);
    if (this.proc !== proc || proc.exitCode !== null) return;
    if (this.down) this.o.log.info(`traffic rules: ${this.o.name} is running again; changes are watched`);
    this.down = false;
    this.setWatching(true);
  }

  private setWatching(w: boolean): void {
    if (this.watching === w) return;
    this.watching = w;
    this.o.onState(w);
  }

  private died(why: string): void {
    this.setWatching(false);
    if (this.stopped) return;
    if (Date.now() - this.startedAt >= STABLE_MS) this.backoffMs = this.o.minBackoffMs ?? 500;
    const msg = `traffic rules: ${this.o.name} ${why}; checking every --iptables-resync period until it is back (retrying in ${this.backoffMs} ms)`;
    if (this.down) this.o.log.debug(msg);
    else this.o.log.warn(msg);
    this.down = true;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.stopped) this.spawn();
    }, this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, this.o.maxBackoffMs ?? 60_000);
  }

  private async read(stream: ReadableStream<Uint8Array>): Promise<void> {
    const split = new LineSplitter();
    for await (const chunk of stream) {
      if (this.stopped) return;
      for (const line of split.push(chunk)) this.o.onLine(line);
    }
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
