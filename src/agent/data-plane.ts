// The data-plane step: our own lease's kernel state (vxlan: the device and its address; host-gw: nothing) through
// the reconciler, and a check against what the kernel really has. Readiness follows the kernel, not the commands
// sent: a device that cannot be created (no CAP_NET_ADMIN, a conflicting device) keeps the agent not ready with the
// kernel's own error, retried with backoff, until it is there; later losses are noticed by the periodic check.
import { readFileSync, writeFileSync } from "node:fs";
import type { Backend } from "../../backends/backend.ts";
import { logger } from "../log.ts";
import { type Command, type CommandResult, CommandQueue, ipJson } from "../kernel/queue.ts";
import { Reconciler } from "../kernel/reconciler.ts";
import { ROUTE_PROTO, type StateFragment } from "../kernel/types.ts";
import type { Lease } from "../lease.ts";
import { sleep } from "../sleep.ts";
import type { Readiness } from "./readiness.ts";
import { Backoff } from "./retry.ts";

const log = logger("agent");
const BLOCKER = "data plane";

/** A queue that remembers the kernel's last refusal of a device or address command (for the not-ready reason). */
class ObservedQueue extends CommandQueue {
  lastDeviceError: string | null = null;
  override async runAll(cmds: Iterable<Command>): Promise<CommandResult[]> {
    const results = await super.runAll(cmds);
    // The first failure of a batch is the cause ("Operation not permitted"); later ones follow from it.
    const first = results.find((r) => !r.ok && (r.cmd.line.startsWith("link ") || r.cmd.line.startsWith("addr ")));
    if (first) this.lastDeviceError = `ip ${first.cmd.line}: ${first.error ?? "failed"}`;
    return results;
  }
}

interface KernelLink {
  ifname?: string;
  flags?: string[];
  addr_info?: { local?: string; prefixlen?: number }[];
}

/** What of `want` (devices up, addresses present) the kernel lacks, from `ip -json addr show`; null when nothing. */
export function missingLocalState(want: StateFragment, linksJson: unknown): string | null {
  const links = new Map<string, KernelLink>();
  for (const l of Array.isArray(linksJson) ? (linksJson as KernelLink[]) : []) if (typeof l?.ifname === "string") links.set(l.ifname, l);
  const missing: string[] = [];
  for (const d of want.devices ?? []) {
    const l = links.get(d.name);
    if (!l) missing.push(`device ${d.name} is missing`);
    else if (!l.flags?.includes("UP")) missing.push(`device ${d.name} is down`);
  }
  for (const a of want.addresses ?? []) {
    const l = links.get(a.dev);
    if (!l) continue; // already reported with its device
    const has = (l.addr_info ?? []).some((x) => `${x.local}/${x.prefixlen}` === a.cidr);
    if (!has) missing.push(`address ${a.cidr} is missing on ${a.dev}`);
  }
  return missing.length ? missing.join(", ") : null;
}

export interface DataPlaneOptions {
  backend: Backend;
  lease: Lease;
  reconcileIntervalMs: number;
  /** --route-nexthops: auto (where the kernel has them), on, off. */
  routeNexthops?: "auto" | "on" | "off";
  /** The start-up read of links and nexthops: the first device setup and the nexthop decision use it. */
  startupKernel?: { links: Promise<unknown>; nexthops: Promise<unknown>; at: number };
  readiness: Readiness;
  signal: AbortSignal;
}

export class DataPlane {
  readonly queue = new ObservedQueue();
  readonly reconciler: Reconciler;
  private readonly local: StateFragment;
  private checker: ReturnType<typeof setInterval> | null = null;

  constructor(private readonly o: DataPlaneOptions) {
    this.reconciler = new Reconciler(this.queue, {
      ownedDevices: o.backend.ownedDevices,
      routeProto: ROUTE_PROTO,
      fullIntervalMs: o.reconcileIntervalMs,
      ...(o.startupKernel ? { firstRead: o.startupKernel } : {}),
      ...(o.routeNexthops === "on" ? { nexthops: true } : o.routeNexthops === "off" ? { nexthops: false } : {}),
    });
    this.local = o.backend.localState(o.lease);
  }

  /** What the kernel lacks of our local state (null: all there). */
  async check(): Promise<string | null> {
    if (!this.local.devices?.length && !this.local.addresses?.length) return null;
    const missing = missingLocalState(this.local, await ipJson(["addr", "show"]));
    if (!missing) return null;
    const why = this.queue.lastDeviceError;
    return why ? `${missing} (${why})` : missing;
  }

  /** Programs our local state and waits (backoff 0.5 s .. 10 s) until the kernel has it; false if stopped first. */
  async setUp(): Promise<boolean> {
    this.reconciler.set("local", this.local);
    const backoff = new Backoff();
    while (!this.o.signal.aborted) {
      await this.reconciler.flush().catch((e) => {
        this.queue.lastDeviceError = (e as Error).message;
      });
      const missing = await this.check().catch((e) => `cannot read the kernel: ${(e as Error).message}`);
      if (!missing) {
        this.queue.lastDeviceError = null;
        this.o.readiness.clear(BLOCKER);
        return true;
      }
      // The failed device step stays dirty in the reconciler: the next flush tries it again.
      this.o.readiness.block(BLOCKER, `${missing}; retrying`);
      await sleep(backoff.next(), this.o.signal);
    }
    return false;
  }

  /** After start-up: re-checks the kernel every reconcile interval; a loss holds readiness back until repaired. */
  watch(): void {
    if (this.checker) return;
    let busy = false;
    this.checker = setInterval(() => {
      if (busy) return;
      busy = true;
      this.check()
        .then((missing) => {
          if (missing) this.o.readiness.block(BLOCKER, `${missing}; the reconciler is repairing it`);
          else {
            this.queue.lastDeviceError = null;
            this.o.readiness.clear(BLOCKER);
          }
        })
        .catch(() => {})
        .finally(() => (busy = false));
    }, this.o.reconcileIntervalMs);
  }

  close(): void {
    if (this.checker) clearInterval(this.checker);
    this.checker = null;
    this.reconciler.stop();
    this.queue.close();
  }
}

/** net.ipv4.ip_forward on: the host routes between its pods and the overlay (as flanneld expects of the host). */
export function enableIPForward(): void {
  const p = "/proc/sys/net/ipv4/ip_forward";
  try {
    if (readFileSync(p, "utf8").trim() !== "1") {
      writeFileSync(p, "1");
      log.info("net.ipv4.ip_forward was off; turned it on");
    }
  } catch (e) {
    log.warn(`could not turn on net.ipv4.ip_forward: ${(e as Error).message}`);
  }
}
