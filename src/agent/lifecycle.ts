// The agent process's life: SIGINT/SIGTERM abort every step through one AbortSignal, tell systemd STOPPING=1 at
// once, and the process ends within STOP_DEADLINE_MS with the exit code whatever it was doing (waiting for the
// store, retrying a device, in a reconcile): a step that does not notice the abort in time is cut off.
import { logger } from "../log.ts";
import type { Notifier } from "../systemd-notify.ts";

const log = logger("agent");

/** systemd's default TimeoutStopSec is 90 s; we promise 3 s and leave room for the runtime to exit. */
export const STOP_DEADLINE_MS = 2500;

export class Lifecycle {
  private readonly ac = new AbortController();
  readonly signal: AbortSignal = this.ac.signal;
  exitCode = 0;
  private readonly onInt = () => this.onSignal("SIGINT");
  private readonly onTerm = () => this.onSignal("SIGTERM");
  private deadline: ReturnType<typeof setTimeout> | null = null;

  constructor(private readonly notifier: Notifier) {
    process.on("SIGINT", this.onInt);
    process.on("SIGTERM", this.onTerm);
  }

  /** Ends the agent with `code`: every step sees the abort. */
  stop(code: number): void {
    this.exitCode = code;
    this.ac.abort();
    // Whatever still holds the process after the steps unwound (a hung close, a retry timer) must not keep it.
    this.deadline ??= setTimeout(() => {
      log.warn(`stopping took longer than ${STOP_DEADLINE_MS} ms; exiting now`);
      process.exit(this.exitCode);
    }, STOP_DEADLINE_MS);
  }

  private onSignal(sig: string): void {
    this.notifier.stopping(`stopping on ${sig}`);
    log.info(`${sig} received; stopping (lease, subnet.env and kernel state are kept)`);
    this.release(); // a second signal kills at once, as flanneld
    this.stop(0);
  }

  /** Removes the signal handlers (the end of runAgent). */
  release(): void {
    process.off("SIGINT", this.onInt);
    process.off("SIGTERM", this.onTerm);
  }
}
