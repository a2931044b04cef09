// Applies desired kernel state through the CommandQueue: the scheduling shell around the pure diff (diff.ts) and the
// kernel reader (kernel-read.ts).
//
// Incremental path: set()/delete() mark changed keys dirty; a drain (a few ms later, or on flush()) runs the device
// step (if any device or address is dirty) and then the peer entries, each as one runAll(). Repair path: start()
// runs the kernel monitor (monitor.ts), whose events mark only what was lost (diff.ts noticeEvent) and drain; no
// process is started while nothing happens. Full path, the rare safety net: fullReconcile() reads what the kernel
// really has, makes that the applied view and drains again.
import { type DeviceWork, DesiredState, type ReconcileCounts } from "./diff.ts";
import { parseLinks, parseNexthops, readFdbs, readLinksDetailed, readLinksRoutesNexthops, readNexthops } from "./kernel-read.ts";
import { KernelMonitor } from "./monitor.ts";
import type { KernelEvent } from "./monitor-events.ts";
import { type CommandQueue, processesSpawned } from "./queue.ts";
import { NEXTHOP_ID_BASE, ROUTE_PROTO, type StateFragment } from "./types.ts";
import { logger, RepeatFilter } from "../log.ts";

export type { ReconcileCounts } from "./diff.ts";

// Through log.ts: a tagged instance made at import time would keep consola's default reporter, not the agent's.
const log = logger("reconciler");

/** How old a read handed in as `firstRead` may be and still be used. */
const FIRST_READ_MAX_AGE_MS = 2000;

export interface ReconcilerOptions {
  /** Devices the agent owns: everything on them that looks like ours may be removed. */
  ownedDevices: (() => string[]) | string[];
  /** Protocol number our routes carry. Default ROUTE_PROTO. */
  routeProto?: number;
  /** Network namespace for reads (the queue must use the same one for writes). */
  netns?: string;
  /** `ip -d addr show` and `ip nexthop show` output read just before (the agent's start-up read): used once, for the first device setup and the nexthop decision, instead of reading again. */
  firstRead?: { links: Promise<unknown>; nexthops: Promise<unknown>; at: number };
  /** Period of the full reconcile started by start(). Default 5 min: the monitor repairs, this is the safety net. */
  fullIntervalMs?: number;
  /** How long set()/delete() wait for more changes before a drain starts. Default 5 ms. */
  coalesceMs?: number;
  /**
   * While changes keep coming (a drain started less than this long ago), the next drain waits until this long after
   * the last one began, so a join storm's peers share processes instead of costing 3 each. Default 50 ms.
   */
  busyCoalesceMs?: number;
  /** Watch the kernel (ip monitor, bridge monitor fdb) from start() on and repair what it reports. Default true. */
  monitor?: boolean;
  /** How long monitor events are gathered before a repair drain (a deleted device is a burst of events). Default 20 ms. */
  monitorSettleMs?: number;
  /**
   * Peer routes through nexthop objects (Linux >= 5.3: linear where plain gateway routes on one device are quadratic).
   * Default: used when `ip nexthop show` works; false forces plain gateway routes; true requires nexthops.
   */
  nexthops?: boolean;
}

export const DEFAULT_FULL_INTERVAL_MS = 300_000;

const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 10_000;

export class Reconciler {
  private readonly queue: CommandQueue;
  private readonly owned: () => string[];
  private readonly netns: string | undefined;
  private readonly fullIntervalMs: number;
  private readonly coalesceMs: number;
  private readonly busyCoalesceMs: number;
  /** performance.now() when the last set()/delete() drain fired. */
  private lastDrainAt = Number.NEGATIVE_INFINITY;
  private readonly state: DesiredState;
  private readonly repeats = new RepeatFilter();

  private chain: Promise<unknown> = Promise.resolve();
  private drainTimer: ReturnType<typeof setTimeout> | null = null;
  private fullTimer: ReturnType<typeof setInterval> | null = null;
  private fullPending = false;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private retryMs = RETRY_MIN_MS;
  private readonly monitorOn: boolean;
  private readonly settleMs: number;
  private monitor: KernelMonitor | null = null;
  private readonly nexthopsOpt: boolean | undefined;
  /** A read of links to use instead of reading them (the start-up read; a full reconcile's own read), until used. */
  private firstLinks: Promise<unknown> | null;
  private firstNexthops: Promise<unknown> | null;
  /** Decided by the first drain or read: null until then. */
  private nhMode: boolean | null = null;
  /** After stop(): a drain still running when it was called must not schedule retries (they would never end). */
  private stopped = false;
  /** Totals over every full reconcile since start, for /metrics; eventRepairs counts monitor events acted on. */
  readonly totals = {
    fullRuns: 0,
    added: 0,
    removed: 0,
    repaired: 0,
    lastFullMs: 0,
    eventRepairs: 0,
    get processesSpawned() {
      return processesSpawned.count;
    },
  };

  constructor(queue: CommandQueue, opts: ReconcilerOptions) {
    this.queue = queue;
    const od = opts.ownedDevices;
    this.owned = typeof od === "function" ? od : () => od;
    this.state = new DesiredState(opts.routeProto ?? ROUTE_PROTO);
    this.netns = opts.netns;
    // NaN, 0 or a negative period would make setInterval spin: fall back to the default.
    const every = opts.fullIntervalMs ?? DEFAULT_FULL_INTERVAL_MS;
    this.fullIntervalMs = Number.isFinite(every) && every > 0 ? every : DEFAULT_FULL_INTERVAL_MS;
    this.coalesceMs = opts.coalesceMs ?? 5;
    this.busyCoalesceMs = opts.busyCoalesceMs ?? 50;
    this.monitorOn = opts.monitor ?? true;
    this.settleMs = opts.monitorSettleMs ?? 20;
    this.nexthopsOpt = opts.nexthops;
    // Only a fresh one: the start may have waited long for a lease, and the kernel may have changed meanwhile.
    const first = opts.firstRead && performance.now() - opts.firstRead.at < FIRST_READ_MAX_AGE_MS ? opts.firstRead : null;
    this.firstLinks = first?.links ?? null;
    this.firstNexthops = first?.nexthops ?? null;
  }

  /** Whether peer routes go through nexthop objects (null: not decided yet, before the first drain). */
  get usesNexthops(): boolean | null {
    return this.nhMode;
  }

  /** Desires `fragment` under `id`, replacing what that id desired before. Throws (changing nothing) on invalid values. */
  set(id: string, fragment: StateFragment): void {
    this.state.set(id, fragment);
    this.scheduleDrain(this.changeDelay());
  }

  /** Whether `id` desires anything. */
  has(id: string): boolean {
    return this.state.has(id);
  }

  /** Stops desiring what `id` desired; entries nobody else desires are removed from the kernel. */
  delete(id: string): void {
    if (this.state.delete(id)) this.scheduleDrain(this.changeDelay());
  }

  /** The coalescing window for a change: short after a quiet spell, up to busyCoalesceMs after the last drain. */
  private changeDelay(): number {
    return Math.max(this.coalesceMs, this.lastDrainAt + this.busyCoalesceMs - performance.now());
  }

  /** Resolves when everything set/deleted so far has been applied (or has failed after the queue's retries). */
  flush(): Promise<void> {
    if (this.drainTimer) clearTimeout(this.drainTimer);
    this.drainTimer = null;
    return this.serial(() => this.drain());
  }

  /** Reads the kernel, repairs what differs from the desired state and removes what we own but nobody desires. */
  fullReconcile(): Promise<ReconcileCounts> {
    return this.serial(async () => {
      const t0 = performance.now();
      this.state.resetCounts();
      await this.loadActual();
      try {
        await this.drain();
      } finally {
        this.firstLinks = null; // the full read's links serve this drain's device step only
      }
      const c = this.state.resetCounts();
      this.totals.lastFullMs = performance.now() - t0;
      this.totals.fullRuns++;
      this.totals.added += c.added;
      this.totals.removed += c.removed;
      this.totals.repaired += c.repaired;
      return c;
    });
  }

  /** Starts the kernel monitor and the periodic full reconcile. */
  start(): void {
    if (this.fullTimer) return;
    this.stopped = false;
    this.fullTimer = setInterval(() => this.safetyNet(), this.fullIntervalMs);
    if (!this.monitorOn) return;
    // The monitor watches nexthops only where the kernel has them: decided first if no drain has run yet.
    if (this.nhMode !== null) this.startMonitor();
    else
      this.serial(() => this.decideNexthops()).then(
        () => this.fullTimer && this.startMonitor(),
        () => this.fullTimer && this.startMonitor(),
      );
  }

  private startMonitor(): void {
    if (this.monitor) return;
    this.monitor = new KernelMonitor({
      netns: this.netns,
      nexthops: this.nhMode === true,
      onEvents: (evs) => this.onKernelEvents(evs),
      // Events may have been lost while a watcher was down: read everything once.
      onRestart: () => this.safetyNet(),
    });
    this.monitor.start();
  }

  /** PIDs of the kernel monitor's processes (empty when it is off). */
  monitorPids(): number[] {
    return this.monitor?.pids() ?? [];
  }

  stop(): void {
    this.stopped = true;
    this.monitor?.stop();
    this.monitor = null;
    if (this.fullTimer) clearInterval(this.fullTimer);
    this.fullTimer = null;
    if (this.drainTimer) clearTimeout(this.drainTimer);
    this.drainTimer = null;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  // ---------------------------------------------------------------------------------------------------------------

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** A full reconcile, never piled up behind a slow one; reports how long it took. */
  private safetyNet(): void {
    if (this.fullPending) return;
    this.fullPending = true;
    this.fullReconcile()
      .then((c) => {
        log.info(
          `full reconcile took ${Math.round(this.totals.lastFullMs)} ms: added ${c.added}, repaired ${c.repaired}, removed ${c.removed}`,
        );
      })
      .catch((e) => log.warn(`full reconcile failed: ${(e as Error).message}`))
      .finally(() => (this.fullPending = false));
  }

  private onKernelEvents(evs: KernelEvent[]): void {
    let need = false;
    for (const ev of evs) {
      // A kept iproute2 process may address a device by a cached index: after a deletion it must not be used again.
      if (ev.kind === "link" && ev.deleted) this.queue.linksChanged();
      if (!this.state.noticeEvent(ev)) continue;
      need = true;
      this.totals.eventRepairs++;
    }
    if (need) this.scheduleDrain(this.settleMs);
  }

  private scheduleDrain(delayMs = this.coalesceMs): void {
    if (this.drainTimer || this.stopped) return;
    this.drainTimer = setTimeout(() => {
      this.drainTimer = null;
      this.lastDrainAt = performance.now();
      this.serial(() => this.drain()).catch((e) => {
        log.warn(`applying kernel state failed: ${(e as Error).message}; retrying`);
        this.retryLater();
      });
    }, delayMs);
  }

  /** A drain that could not finish is tried again with backoff (what it left undone is still dirty). */
  private retryLater(): void {
    if (this.retryTimer || this.stopped) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.scheduleDrain();
    }, this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
  }

  /** Once: routes through nexthop objects if the kernel has them (adopting ours a previous run left), else plain. */
  private async decideNexthops(): Promise<void> {
    if (this.nhMode !== null) return;
    if (this.nexthopsOpt === false) {
      this.nhMode = false;
      log.info("peer routes are plain gateway routes (nexthop objects turned off)");
      return;
    }
    try {
      const first = this.firstNexthops;
      this.firstNexthops = null;
      this.state.useNexthops(first ? parseNexthops(await first) : await readNexthops(this.netns));
      this.nhMode = true;
      log.info(`peer routes go through nexthop objects (proto ${this.state.proto}, ids from ${NEXTHOP_ID_BASE})`);
    } catch (e) {
      if (this.nexthopsOpt === true) throw e;
      this.nhMode = false;
      log.warn(
        `the kernel has no nexthop objects (Linux < 5.3?): peer routes are plain gateway routes, slower to program by the thousand (${(e as Error).message})`,
      );
    }
  }

  private async drain(): Promise<void> {
    await this.decideNexthops();
    if (this.state.hasDeviceWork()) {
      // Peer entries need their device: while it cannot be set up, they wait (dirty) instead of failing one by one.
      if (!(await this.applyDevices())) {
        this.retryLater();
        return;
      }
    }
    this.retryMs = RETRY_MIN_MS;
    // Streamed: the queue pulls the commands as it writes them, so planning overlaps ip's work.
    const plan = this.state.streamPeers();
    const results = await this.queue.runAll(plan.commands);
    // A failed entry stays as it was in `applied`; the next full reconcile sees the kernel and tries again.
    this.state.peersDone(plan, (i) => results[i]!.ok);
  }

  /** Devices and addresses: rare, so they may read the kernel first. False if a command failed (all retried later). */
  private async applyDevices(): Promise<boolean> {
    const work: DeviceWork = this.state.takeDeviceWork();
    let links: Awaited<ReturnType<typeof readLinksDetailed>>;
    const first = this.firstLinks;
    this.firstLinks = null;
    try {
      links = first ? parseLinks(await first) : await readLinksDetailed(this.netns);
    } catch (e) {
      this.state.redoDevices(work); // try again on the next drain
      throw e;
    }
    const plan = this.state.planDevices(work, links, this.owned());
    for (const n of plan.notes) log.info(n);
    let ok = true;
    if (plan.cmds.length) {
      for (const r of await this.queue.runAll(plan.cmds)) {
        if (r.ok) {
          this.repeats.forget(r.cmd.line);
          continue;
        }
        ok = false;
        if (this.repeats.isNew(r.cmd.line, r.error ?? "")) log.warn(`device setup: ip ${r.cmd.line}: ${r.error}`);
      }
    }
    this.state.devicesDone(work, plan, ok);
    return ok;
  }

  /** Reads routes, nexthops, neighbours and FDB entries we may own and makes them the applied view. */
  private async loadActual(): Promise<void> {
    await this.decideNexthops();
    const { links, present, routes, nexthops, neighsOf } = await readLinksRoutesNexthops(
      this.state.proto,
      this.nhMode === true,
      this.netns,
    );
    // The device step of the drain that follows checks the addresses on these links instead of reading them again.
    this.firstLinks = Promise.resolve(links);
    const { neighDevs, fdbDevs } = this.state.devicesToRead(this.owned(), present);
    const [neighs, fdbs] = [neighsOf(neighDevs), await readFdbs(fdbDevs, this.netns)];
    this.state.adoptKernel({ present, routes, neighs, fdbs, nexthops }, this.owned());
  }
}
