// One owner of "is the agent ready, and if not, why": /readyz, flannel_bin_ready and systemd (STATUS=, READY=1)
// all read it, so they can never disagree. Ready = start-up finished (the first peer sync is programmed) and no
// blocker is set. A blocker is a named condition that holds readiness back at any time (the data plane is not in
// the kernel, subnet.env could not be written, rules missing); each distinct reason is logged once.
import type { HealthState } from "../health.ts";
import { logger } from "../log.ts";
import type { Notifier } from "../systemd-notify.ts";

const log = logger("agent");

export class Readiness {
  /** What /readyz shows and metrics read. */
  readonly health: HealthState = { ready: false, waitingFor: "connecting to the store" };
  private phase: string | null = "connecting to the store";
  private readonly blockers = new Map<string, string>();
  private summary = "";
  private toldSystemd = false;

  constructor(private readonly notifier: Notifier) {}

  get ready(): boolean {
    return this.health.ready;
  }

  /** A start-up wait (store, network config, lease, initial peer sync). `status` is the systemd STATUS= text. */
  waiting(what: string, status = `waiting for ${what}`): void {
    this.phase = what;
    this.update(status);
  }

  /** Start-up is done; `summary` says what is programmed ("lease 10.5.3.0/24, 4 peers"). */
  started(summary: string): void {
    this.phase = null;
    this.summary = summary;
    this.update();
  }

  /** A new summary while running (peer count changed): STATUS= only. */
  setSummary(summary: string): void {
    this.summary = summary;
    if (this.health.ready) this.update();
  }

  /** While ready, something is degraded but the data plane is fine (a store outage): STATUS= says it; "" = cleared. */
  setDegraded(text: string): void {
    if (text === this.degradedText) return;
    this.degradedText = text;
    if (this.health.ready) this.update();
  }
  private degradedText = "";

  /** Holds readiness back with `reason` (logged once per distinct reason) until clear(name). */
  block(name: string, reason: string): void {
    if (this.blockers.get(name) === reason) return;
    this.blockers.set(name, reason);
    log.error(`not ready: ${reason}`);
    this.update();
  }

  clear(name: string): void {
    const had = this.blockers.get(name);
    if (had === undefined) return;
    this.blockers.delete(name);
    log.info(`${name} is fine again (was: ${had})`);
    this.update();
  }

  isBlocked(name: string): boolean {
    return this.blockers.has(name);
  }

  private readonly liveness = new Map<string, () => boolean>();

  /**
   * A check that the agent is not wedged (e.g. "store watch": events or heartbeats seen recently). systemd's
   * watchdog is pinged only while every check passes, so WatchdogSec= restarts a wedged agent.
   */
  addLiveness(name: string, check: () => boolean): void {
    this.liveness.set(name, check);
  }

  alive(): boolean {
    for (const check of this.liveness.values()) if (!check()) return false;
    return true;
  }

  private update(waitingStatus?: string): void {
    const blocker = this.blockers.values().next().value as string | undefined;
    const ready = this.phase === null && blocker === undefined;
    this.health.ready = ready;
    this.health.waitingFor = ready ? "" : (blocker ?? this.phase ?? "");
    if (ready) {
      const status = `ready: ${this.summary}${this.degradedText ? `; degraded: ${this.degradedText}` : ""}`;
      if (!this.toldSystemd) {
        this.toldSystemd = true; // READY=1 once; later changes are STATUS= lines
        this.notifier.ready(status);
      } else this.notifier.status(status);
    } else if (blocker !== undefined) this.notifier.status(`not ready: ${blocker}`);
    else this.notifier.status(waitingStatus ?? `waiting for ${this.phase}`);
  }
}
