// flanneld's traffic rules, kept: forward accept (--iptables-forward-rules) and masquerade (--ip-masq) installed
// before subnet.env is written and before ready, then checked every --iptables-resync seconds in one read and
// repaired when something (a firewalld reload, `iptables -F`) removed them (flannel #1668). Plus flanneld's optional
// blackhole route for our own subnet. Nothing is removed on exit: a restart must not cut traffic.

import type { ConsolaInstance } from "consola";
import { type Engine, IptablesEngine, NftEngine, RulesError, detectIptables, makeIptablesEngine } from "./engines.ts";
import { type Exec, have, makeExec } from "./exec.ts";
import type { RuleSet } from "./types.ts";
import { sleep } from "../sleep.ts";

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
  /** --iptables-resync in ms. */
  resyncMs: number;
  /** FLANNEL_NETWORK / FLANNEL_SUBNET (masked) of the previous run's subnet.env, if any. */
  previous: { network: string | null; subnet: string | null } | null;
  log: ConsolaInstance;
  /** Run every command in this network namespace (tests). */
  netns?: string;
  exec?: Exec;
}

export interface TrafficRulesStats {
  /** Rules (or a blackhole route) found missing or wrong after the first install and put back. */
  repaired: number;
  /** Checks or fixes that failed (retried next period). */
  failures: number;
}

/** What the agent needs from a traffic-rules step: install before ready, keep in the background, report. */
export interface TrafficRulesStep {
  /** First install; true when every rule is in place (false: logged, retried by run()). */
  install(): Promise<boolean>;
  /** The resync loop until the signal aborts. */
  run(signal: AbortSignal): Promise<void>;
  /** What is still missing, for /readyz (empty when everything is in place). */
  missing(): string[];
  readonly stats: TrafficRulesStats;
}

// A blackhole route sits behind the connected route of the same prefix (cni0/docker0 has metric 0): a high metric
// keeps `ip route replace` from ever replacing that route.
const BLACKHOLE_METRIC = "4294967295";

export class TrafficRules implements TrafficRulesStep {
  readonly stats: TrafficRulesStats = { repaired: 0, failures: 0 };
  private readonly exec: Exec;
  private engine: Engine | null = null;
  private problems: string[] = ["traffic rules not checked yet"];
  private installed = false;
  private lastError = "";
  private ruleSet: RuleSet | null = null;

  constructor(private readonly o: TrafficRulesOptions) {
    this.exec = o.exec ?? makeExec(o.netns);
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
      for (const f of ["legacy", "nft"] as const) if (have(`iptables-${f}-save`)) others.push(await makeIptablesEngine(this.exec, f));
      if (others.length === 0 && have("iptables-save")) others.push(await makeIptablesEngine(this.exec, "plain"));
    } else {
      const { flavour, why } = await detectIptables(this.exec);
      engine = await makeIptablesEngine(this.exec, flavour);
      log.info(`traffic rules: using iptables-${flavour === "plain" ? "restore" : flavour} (${why})`);
      if (flavour !== "plain") others.push(await makeIptablesEngine(this.exec, flavour === "legacy" ? "nft" : "legacy"));
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
    const engine = this.engine;
    const rs = this.ruleSet;
    if (!engine || !rs) return false;
    let problems: string[] = [];
    try {
      const insp = await engine.inspect(rs, first);
      const bh = this.o.blackhole ? await this.blackholeMissing() : false;
      problems = [...insp.problems, ...(bh ? [`blackhole route for ${rs.subnet} missing`] : [])];
      if (problems.length > 0) {
        await insp.fix();
        if (bh) await this.addBlackhole();
        const after = await engine.inspect(rs, false);
        const bhAfter = this.o.blackhole ? await this.blackholeMissing() : false;
        const left = [...after.problems, ...(bhAfter ? [`blackhole route for ${rs.subnet} missing`] : [])];
        if (left.length > 0) throw new RulesError(`still wrong after the fix: ${left.join("; ")}`);
        if (this.installed) {
          this.stats.repaired += problems.length;
          this.o.log.warn(`traffic rules repaired (${engine.kind}): ${problems.join("; ")}`);
        } else this.o.log.info(`traffic rules installed (${engine.kind})${describe(rs, this.o.blackhole)}`);
      } else if (!this.installed) this.o.log.info(`traffic rules already in place (${engine.kind})${describe(rs, this.o.blackhole)}`);
      this.installed = true;
      this.problems = [];
      if (this.lastError) this.o.log.info("traffic rules: in place again");
      this.lastError = "";
      return true;
    } catch (e) {
      this.failed(e, problems);
      return false;
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
    while (!signal.aborted) {
      await sleep(this.o.resyncMs, signal);
      if (signal.aborted) break;
      if (!this.engine) {
        if (!this.installed) await this.install();
      } else await this.sync(!this.installed);
    }
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

function describe(rs: RuleSet, blackhole: boolean): string {
  const parts = [
    rs.forward ? `forward accept for ${rs.network}` : "",
    rs.masq ? `masquerade for ${rs.network}${rs.randomFully ? " (fully random)" : ""}` : "",
    blackhole ? `blackhole route ${rs.subnet}` : "",
  ].filter(Boolean);
  return parts.length ? `: ${parts.join(", ")}` : ": no rules asked for";
}

export { IptablesEngine, NftEngine };
