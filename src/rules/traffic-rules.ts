// flanneld's traffic rules, kept: forward accept (--iptables-forward-rules) and masquerade (--ip-masq) installed
// before subnet.env is written and before ready, then kept: where the rules live in nf_tables (nftables mode,
// iptables-nft) one long-lived `nft monitor rules` reports every change near them and a check follows within a
// fraction of a second (check-policy.ts: debounced, rate-limited on a busy host, a safety net every
// --reconcile-interval); iptables-legacy has no change events, so there it is one read every --iptables-resync seconds,
// as flanneld does. Whatever removed them (a firewalld reload, `iptables -F`: flannel #1668) is repaired in one write.
// Plus flanneld's optional blackhole route for our own subnet, watched with `ip monitor route`. Nothing is removed on
// exit: a restart must not cut traffic.
import type { ConsolaInstance } from "consola";
import { type Engine, IptablesEngine, NftEngine, RulesError, detectIptables, leftoversOfIptables, makeIptablesEngine } from "./engines.ts";
import { type CheckOutcome, CheckPolicy } from "./check-policy.ts";
import { type Exec, have, makeExec, wrapArgv } from "./exec.ts";
import {
  type MonitorLine,
  type WatchTarget,
  nftEventMatters,
  nftEventRemovesOurs,
  parseNftRuleEvent,
  routeLineMatters,
} from "./monitor-lines.ts";
import type { RuleSet } from "./types.ts";
import { type ChangeWatcher, NETLINK_NETFILTER, NETLINK_ROUTE, Watcher, type WatcherOptions } from "./watcher.ts";
import { escapeLogText } from "../log-text.ts";

export interface TrafficRulesOptions {
  network: string;
  subnet: string;
  masq: boolean;
  forward: boolean;
  /** --ip-masq-fully-random-disable */
  fullyRandomDisable: boolean;
  /** Network config "EnableNFTables". */
  nftables: boolean;
  /** --ip-blackhole-route */
  blackhole: boolean;
  /** --iptables-resync in ms: the poll period where changes cannot be watched, the rate limit where they can. */
  resyncMs: number;
  /** Safety-net check period while changes are watched (--reconcile-interval; default 5 min). */
  safetyNetMs?: number;
  /** FLANNEL_NETWORK / FLANNEL_SUBNET (masked) of the previous run's subnet.env, if any. */
  previous: { network: string | null; subnet: string | null } | null;
  log: ConsolaInstance;
  /** Run every command in this network namespace (tests). */
  netns?: string;
  exec?: Exec;
  /** Starts a change watcher; by default a real process, none with a scripted `exec` (no kernel to watch). */
  watcher?: (o: WatcherOptions) => ChangeWatcher;
}

export interface TrafficRulesStats {
  /** Rules (or a blackhole route) found missing or wrong after the first install and put back. */
  repaired: number;
  /** Checks or fixes that failed (retried next period). */
  failures: number;
  /** Processes this step started (reads, fixes, watchers): 0 while an agent is idle on a watched host. */
  processesSpawned: number;
  /** Checks made while keeping the rules (after the first install). */
  checks: number;
}

/** What the agent needs from a traffic-rules step: install before ready, keep in the background, report. */
export interface TrafficRulesStep {
  /** First install; true when every rule is in place (false: logged, retried by run()). */
  install(): Promise<boolean>;
  /** Keeps the rules until the signal aborts (or stop()). */
  run(signal: AbortSignal): Promise<void>;
  /** Ends run() and kills the watchers. */
  stop(): void;
  /** What is still missing, for /readyz (empty when everything is in place). */
  missing(): string[];
  readonly stats: TrafficRulesStats;
}

// A blackhole route sits behind the connected route of the same prefix (cni0/docker0 has metric 0): a high metric
// keeps `ip route replace` from ever replacing that route.
const BLACKHOLE_METRIC = "4294967295";

const DEFAULT_SAFETY_NET_MS = 5 * 60_000;
/** How long the first install waits for its watchers before reading back (later, their subscription costs a check). */
const WATCH_WAIT_MS = 1000;
const UNSETTLED_MAX = 5;

export class TrafficRules implements TrafficRulesStep {
  readonly stats: TrafficRulesStats = { repaired: 0, failures: 0, processesSpawned: 0, checks: 0 };
  private readonly exec: Exec;
  private readonly policy: CheckPolicy;
  private readonly safetyNetMs: number;
  private watchers: ChangeWatcher[] = [];
  private watchStarted = false;
  private readonly stopper = new AbortController();
  private wake: (() => void) | null = null;
  /** Called when a watcher subscribes or stops watching (watchersSubscribed waits on it). */
  private watchState: (() => void) | null = null;
  /** Checks in a row whose fix was still not in place when read back. */
  private unsettled = 0;
  private engine: Engine | null = null;
  private problems: string[] = ["traffic rules not checked yet"];
  private installed = false;
  private lastError = "";
  private ruleSet: RuleSet | null = null;

  constructor(private readonly o: TrafficRulesOptions) {
    const exec = o.exec ?? makeExec(o.netns);
    this.exec = (argv, stdin) => {
      this.stats.processesSpawned++;
      return exec(argv, stdin);
    };
    // Never more often than the poll period (a --reconcile-interval of 0 or 100ms must not become a busy loop).
    this.safetyNetMs = Math.max(o.safetyNetMs ?? DEFAULT_SAFETY_NET_MS, o.resyncMs);
    this.policy = new CheckPolicy({ resyncMs: o.resyncMs, safetyNetMs: this.safetyNetMs }, Date.now());
  }

  missing(): string[] {
    return this.problems;
  }

  /** Picks the engine, removes the other engine's leftovers, then installs. Errors are logged and retried by run(). */
  async install(): Promise<boolean> {
    try {
      if (!this.engine) await this.prepare();
    } catch (e) {
      const o = this.o;
      if (!o.masq && !o.forward && !o.blackhole) {
        // Nothing asked for: a host without iptables/nft is fine; only leftovers could not be looked for.
        o.log.info(`traffic rules: none asked for (${(e as Error).message})`);
        this.problems = [];
        this.installed = true;
        return true;
      }
      this.failed(e);
      return false;
    }
    return this.sync(true);
  }

  private async prepare(): Promise<void> {
    const o = this.o;
    const log = o.log;
    let engine: Engine;
    const others: Engine[] = [];
    if (o.nftables) {
      if (!have("nft")) throw new RulesError('"EnableNFTables": true but nft is not installed (Debian: apt-get install nftables)');
      engine = new NftEngine(this.exec);
      log.info("traffic rules: nftables mode (table ip flannel-ipv4)");
      for (const f of ["legacy", "nft"] as const) if (have(`iptables-${f}-save`)) others.push(leftoversOfIptables(this.exec, f));
      if (others.length === 0 && have("iptables-save")) others.push(await makeIptablesEngine(this.exec, "plain"));
    } else {
      // The detection's dumps of both flavours are the first read of each (one process per flavour, not per table).
      const { flavour, why, dumps, known } = await detectIptables(this.exec);
      const chosen = await makeIptablesEngine(this.exec, flavour, known);
      if (flavour !== "plain" && dumps[flavour] !== undefined) chosen.prime(dumps[flavour]);
      engine = chosen;
      log.info(`traffic rules: using iptables-${flavour === "plain" ? "restore" : flavour} (${why})`);
      if (flavour !== "plain") {
        const other = flavour === "legacy" ? "nft" : "legacy";
        others.push(leftoversOfIptables(this.exec, other, dumps[other]));
      }
      if (have("nft")) others.push(new NftEngine(this.exec));
    }
    // Switching engines (or iptables flavours): what we left in the other one goes, so the two never both act.
    for (const other of others) {
      try {
        const removed = await other.removeAll();
        if (removed.length) log.info(`traffic rules: removed leftovers of the other engine: ${removed.join("; ")}`);
      } catch (e) {
        log.warn(`traffic rules: could not check ${other.kind} for leftovers: ${(e as Error).message}`);
      }
    }
    const prev = o.previous;
    if (prev && ((prev.network && prev.network !== o.network) || (prev.subnet && prev.subnet !== o.subnet))) {
      // Our chains are rewritten whole in one transaction, so the rules built from the old values are gone the moment
      // the new ones are in: there is no moment with both, nor one with none.
      log.info(
        `traffic rules: Network/subnet changed since the last run (${prev.network ?? "?"} ${prev.subnet ?? "?"} -> ${o.network} ${o.subnet}); replacing the old rules`,
      );
      if (prev.subnet && prev.subnet !== o.subnet) await this.removeBlackhole(prev.subnet);
    }
    this.engine = engine;
    this.ruleSet = {
      network: o.network,
      subnet: o.subnet,
      masq: o.masq,
      forward: o.forward,
      randomFully: engine.randomFullySupported && !o.fullyRandomDisable,
    };
  }

  /** One check and, if needed, one fix. Returns whether everything is in place afterwards. */
  private async sync(first: boolean): Promise<boolean> {
    return (await this.check(first)) !== "failed" && this.problems.length === 0;
  }

  private async check(first: boolean): Promise<CheckOutcome> {
    const engine = this.engine;
    const rs = this.ruleSet;
    if (!engine || !rs) return "failed";
    let problems: string[] = [];
    let left: string[] = [];
    try {
      const insp = await engine.inspect(rs, first);
      const bh = this.o.blackhole ? await this.blackholeMissing() : false;
      problems = [...insp.problems, ...(bh ? [`blackhole route for ${rs.subnet} missing`] : [])];
      if (problems.length > 0) {
        this.policy.writing(); // the events of our own write cost no token
        try {
          await insp.fix();
          if (bh) await this.addBlackhole();
        } finally {
          this.policy.written(Date.now());
        }
        // The first fix starts the watchers before it is read back, so that one read both verifies the fix and
        // covers everything the watchers could not see (a separate read after they subscribe is not needed). Not
        // before the fix: they would report our own write, and that costs another check.
        if (!this.watchStarted) {
          this.startWatching(this.stopper.signal);
          await this.watchersSubscribed(WATCH_WAIT_MS);
          this.policy.reading();
        }
        // Read again. What is still wrong may be a change made meanwhile (firewalld reloading right then, a script
        // deleting rule after rule): checked again shortly, like any change. Only a fix that keeps not taking,
        // UNSETTLED_MAX checks in a row, is a failure (retried every --iptables-resync).
        const after = await engine.inspect(rs, false);
        const bhAfter = this.o.blackhole ? await this.blackholeMissing() : false;
        left = [...after.problems, ...(bhAfter ? [`blackhole route for ${rs.subnet} missing`] : [])];
        if (left.length > 0 && ++this.unsettled >= UNSETTLED_MAX) {
          this.unsettled = 0;
          throw new RulesError(`still wrong after the fix: ${left.join("; ")}`);
        }
        if (left.length > 0) this.policy.event(Date.now());
        if (this.installed) {
          this.stats.repaired += problems.length;
          this.o.log.warn(`traffic rules repaired (${engine.kind}): ${problems.join("; ")}`);
        } else this.o.log.info(`traffic rules installed (${engine.kind})${describe(rs, this.o.blackhole)}`);
      } else if (!this.installed) this.o.log.info(`traffic rules already in place (${engine.kind})${describe(rs, this.o.blackhole)}`);
      this.installed = true;
      this.problems = left;
      if (left.length > 0) return "repaired";
      this.unsettled = 0;
      if (this.lastError) this.o.log.info("traffic rules: in place again");
      this.lastError = "";
      return problems.length > 0 ? "repaired" : "clean";
    } catch (e) {
      this.failed(e, problems);
      return "failed";
    }
  }

  /** Counts a failed check or fix; /readyz then lists what is missing, then the error. */
  private failed(e: unknown, missing: string[] = []): void {
    this.stats.failures++;
    const msg = (e as Error).message;
    // Logged once per distinct error, not every period.
    if (msg !== this.lastError) {
      const input = e instanceof RulesError && e.input ? `; input was:\n${e.input.trimEnd()}` : "";
      this.o.log.error(`traffic rules: ${msg} (retrying every ${this.o.resyncMs / 1000} s)${input}`);
    }
    this.lastError = msg;
    this.problems = [...missing, msg.length > 300 ? `${msg.slice(0, 300)}…` : msg];
  }

  async run(signal: AbortSignal): Promise<void> {
    const stop = AbortSignal.any([signal, this.stopper.signal]);
    const onAbort = () => this.wake?.();
    stop.addEventListener("abort", onAbort);
    try {
      while (!stop.aborted) {
        if (this.engine && !this.watchStarted) this.startWatching(stop);
        const now = Date.now();
        if (this.installed && !this.wanted()) {
          await this.sleep(Number.POSITIVE_INFINITY, stop); // nothing to keep
          continue;
        }
        this.policy.polling = this.watchers.length === 0 || this.watchers.some((w) => !w.alive);
        const at = this.policy.nextAt(now);
        if (at > now) {
          await this.sleep(at - now, stop); // woken early by an event, a watcher or the stop: looked at again
          continue;
        }
        this.policy.begin(now);
        let outcome: CheckOutcome;
        if (!this.engine) outcome = (await this.install()) ? "clean" : "failed";
        else outcome = await this.check(!this.installed);
        this.policy.end(Date.now(), outcome);
        this.stats.checks++;
      }
    } finally {
      stop.removeEventListener("abort", onAbort);
      for (const w of this.watchers) w.stop();
      this.watchers = [];
    }
  }

  stop(): void {
    this.stopper.abort();
    for (const w of this.watchers) w.stop();
    this.watchState?.();
  }

  /** PIDs of the running watchers (tests, and anyone asking what this step runs). */
  watcherPids(): number[] {
    return this.watchers.map((w) => w.pid).filter((p): p is number => typeof p === "number");
  }

  private wanted(): boolean {
    return this.o.masq || this.o.forward || this.o.blackhole;
  }

  /** Sleeps up to `ms` (24 h at most per turn), or until woken. */
  private sleep(ms: number, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.resolve();
    return wakeable(Math.min(ms, 86_400_000), (wake) => {
      this.wake = () => {
        this.wake = null;
        wake();
      };
    });
  }

  private changed(removal = false): void {
    this.policy.event(Date.now(), removal);
    this.wake?.();
  }

  /** Starts the watchers this engine allows, and says once how the rules are kept. */
  private startWatching(signal: AbortSignal): void {
    this.watchStarted = true;
    const o = this.o;
    const rs = this.ruleSet;
    const engine = this.engine;
    if (!rs || !engine || !this.wanted()) return;
    const resync = `${o.resyncMs / 1000} s`;
    const targets: WatchTarget[] | null = o.masq || o.forward ? engine.watchTargets(rs) : [];
    if (targets === null || (targets.length > 0 && !have("nft"))) {
      o.log.info(
        targets === null
          ? `traffic rules: ${engine.kind} reports no changes; checking every ${resync} (--iptables-resync)`
          : `traffic rules: nft is not installed, so changes cannot be watched; checking every ${resync} (--iptables-resync; install nftables to watch)`,
      );
      return;
    }
    let announced = false;
    const onState = (watching: boolean) => {
      if (watching) this.policy.watching(Date.now());
      // Said once, when every watcher is subscribed: from then on no change goes unseen.
      if (watching && !announced && this.watchers.every((w) => w.alive)) {
        announced = true;
        o.log.info(
          `traffic rules: watching for changes (${this.watchers.map((w) => `\`${w.name}\``).join(", ")}); a check follows each, at most one per ${resync} on a busy host, plus one every ${this.safetyNetMs / 1000} s`,
        );
      }
      this.wake?.();
      this.watchState?.();
    };
    const make = o.watcher ?? (o.exec ? null : (w: WatcherOptions) => new Watcher(w));
    if (!make) return;
    const common = { onState, onSpawn: () => this.stats.processesSpawned++, log: o.log };
    if (targets.length > 0)
      this.watchers.push(
        make({
          ...common,
          name: "nft monitor rules",
          argv: wrapArgv(o.netns, ["nft", "monitor", "rules"]),
          netlinkProtocol: NETLINK_NETFILTER,
          onLine: (line) => this.nftLine(line, targets),
        }),
      );
    if (o.blackhole)
      this.watchers.push(
        make({
          ...common,
          name: "ip monitor route",
          argv: wrapArgv(o.netns, ["ip", "-4", "-o", "monitor", "route"]),
          netlinkProtocol: NETLINK_ROUTE,
          onLine: (line) => {
            if (routeLineMatters(line, rs.subnet)) this.changed();
          },
        }),
      );
    if (signal.aborted) return;
    for (const w of this.watchers) w.start();
  }

  /** Until every watcher has subscribed, or `ms` passed, or stop(). */
  private async watchersSubscribed(ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    while (!this.watchers.every((w) => w.alive) && Date.now() < deadline && !this.stopper.signal.aborted)
      await wakeable(deadline - Date.now(), (wake) => {
        this.watchState = () => {
          this.watchState = null;
          wake();
        };
      });
    this.watchState = null;
  }

  private nftLine(line: MonitorLine, targets: WatchTarget[]): void {
    const ev = parseNftRuleEvent(line);
    if (!ev || !nftEventMatters(ev, targets)) return;
    this.o.log.debug(`traffic rules: change seen: ${escapeLogText(line.text)}`);
    this.changed(nftEventRemovesOurs(ev, targets));
  }

  private async blackholeRoutes(): Promise<string[]> {
    const r = await this.exec(["ip", "-j", "-4", "route", "show", "table", "main", "type", "blackhole"]);
    if (r.code !== 0) throw new RulesError(`ip route show type blackhole failed: ${r.stderr.trim()}`);
    const list = JSON.parse(r.stdout || "[]") as { dst?: unknown }[];
    return list.map((x) => String(x.dst));
  }

  private async blackholeMissing(): Promise<boolean> {
    return !(await this.blackholeRoutes()).includes(this.o.subnet);
  }

  private async addBlackhole(): Promise<void> {
    const r = await this.exec(["ip", "route", "replace", "blackhole", this.o.subnet, "metric", BLACKHOLE_METRIC]);
    if (r.code !== 0) throw new RulesError(`ip route replace blackhole ${this.o.subnet} failed: ${r.stderr.trim()}`);
  }

  private async removeBlackhole(subnet: string): Promise<void> {
    try {
      if (!(await this.blackholeRoutes()).includes(subnet)) return;
      await this.exec(["ip", "route", "del", "blackhole", subnet, "metric", BLACKHOLE_METRIC]);
      this.o.log.info(`removed the blackhole route of the previous subnet ${subnet}`);
    } catch (e) {
      this.o.log.warn(`could not remove the previous blackhole route ${subnet}: ${(e as Error).message}`);
    }
  }
}

/** Resolves after `ms`, or sooner when the function handed to `onWake` is called. */
function wakeable(ms: number, onWake: (wake: () => void) => void): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      resolve();
    }
    onWake(done);
  });
}

function describe(rs: RuleSet, blackhole: boolean): string {
  const parts = [
    rs.forward ? `forward accept for ${rs.network}` : "",
    rs.masq ? `masquerade for ${rs.network}${rs.randomFully ? " (fully random)" : ""}` : "",
    blackhole ? `blackhole route ${rs.subnet}` : "",
  ].filter(Boolean);
  return parts.length ? `: ${parts.join(", ")}` : ": no rules asked for";
}

export { IptablesEngine, NftEngine };
