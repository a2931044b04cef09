// The two ways to install the rules: iptables (legacy or nft flavour, whichever the host already uses: never both)
// and nftables (our own table). Each engine reads its state in one go, says what is wrong, and fixes it with one
// process (iptables-restore --noflush, every table in one input) or one transaction (nft -f -).

import type { Exec } from "./exec.ts";
import { realpathSync } from "node:fs";
import { have, which } from "./exec.ts";
import {
  type IptPlan,
  type IptTable,
  atLeast,
  countRules,
  iptablesSpecs,
  parseIptablesSave,
  parseIptablesVersion,
  planIptables,
  restorePayload,
} from "./iptables-text.ts";
import type { WatchTarget } from "./monitor-lines.ts";
import { NFT_FAMILY, NFT_TABLE, nftChains, nftProblems, nftScript, parseNftList } from "./nft-text.ts";
import type { EngineKind, RuleSet } from "./types.ts";

export class RulesError extends Error {
  /** What was sent (a restore payload or nft script), for the log; kept out of /readyz. */
  constructor(
    message: string,
    readonly input?: string,
  ) {
    super(message);
  }
}

/** One read of the current state against the wanted rules: what is wrong, and how to fix it. */
export interface Inspection {
  problems: string[];
  /** Runs the fix (nothing when there are no problems). */
  fix: () => Promise<void>;
}

export interface Engine {
  readonly kind: EngineKind;
  /** Whether masquerade may use --random-fully / fully-random. */
  readonly randomFullySupported: boolean;
  /** Reads and compares. `includeAbsent`: also look for our chains of disabled features (startup only). */
  inspect(rs: RuleSet, includeAbsent: boolean): Promise<Inspection>;
  /** Removes everything of ours this engine holds (when the other engine is in use). Returns what was removed. */
  removeAll(): Promise<string[]>;
  /** Where `nft monitor rules` reports changes to our rules; null when it cannot (iptables-legacy has no events). */
  watchTargets(rs: RuleSet): WatchTarget[] | null;
}

async function must(exec: Exec, argv: string[], stdin?: string): Promise<string> {
  const r = await exec(argv, stdin);
  if (r.code !== 0) throw new RulesError(`${argv.join(" ")} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`, stdin);
  return r.stdout;
}

export type IptFlavour = "legacy" | "nft" | "plain";

type IptVersion = ReturnType<typeof parseIptablesVersion>;

/** `iptables-restore --noflush`, with --wait where this iptables has it (≥ 1.6.2, as --random-fully). */
const restoreArgv = (bin: string, v: IptVersion): string[] => [`${bin}-restore`, "--noflush", ...(modern(v) ? ["--wait"] : [])];
const modern = (v: IptVersion): boolean => v !== null && atLeast(v.version, [1, 6, 2]);

export class IptablesEngine implements Engine {
  readonly kind: EngineKind;
  private readonly save: string;
  private restore: string[] | null;
  /** A whole-host dump read moments ago (the flavour detection's): the next read uses it instead of a process. */
  private primed: string | null = null;
  constructor(
    private readonly exec: Exec,
    readonly flavour: IptFlavour,
    readonly randomFullySupported: boolean,
    /** null: not known yet; `--version` is read before the first restore (an engine only checked for leftovers). */
    waitSupported: boolean | null,
    /** The rules live in nf_tables (iptables-nft, or a plain `iptables` that is iptables-nft). */
    private readonly nfTables = flavour === "nft",
  ) {
    this.kind = nfTables ? "iptables-nft" : "iptables-legacy";
    this.save = `${binOf(flavour)}-save`;
    this.restore = waitSupported === null ? null : [`${binOf(flavour)}-restore`, "--noflush", ...(waitSupported ? ["--wait"] : [])];
  }

  /** The next read of the tables is this `<bin>-save` output (all tables) instead of a new one. */
  prime(dump: string): void {
    this.primed = dump;
  }

  private async plans(rs: RuleSet | null, includeAbsent: boolean): Promise<{ table: IptTable; plan: IptPlan }[]> {
    const specs = rs ? iptablesSpecs(rs) : iptablesSpecs({ network: "", subnet: "", masq: false, forward: false, randomFully: false });
    const wanted = specs.filter((s) => s.present || includeAbsent);
    // One process for all the tables wanted: a whole-host dump when there are several (a table missing from it is
    // one nothing has loaded: empty, as `-t <table>` would show it).
    let dump = this.primed;
    this.primed = null;
    if (dump === null && wanted.length > 1) dump = await must(this.exec, [this.save]);
    const out: { table: IptTable; plan: IptPlan }[] = [];
    for (const { spec, present } of wanted) {
      const saved = parseIptablesSave(dump ?? (await must(this.exec, [this.save, "-t", spec.table])), spec.table);
      out.push({ table: spec.table, plan: planIptables(spec, present, saved) });
    }
    return out;
  }

  /**
   * One process for every table that needs a change: each table is still committed whole at its COMMIT (iptables-nft
   * commits them all in one batch), and a table that fails stops the ones after it, as separate processes would.
   */
  private async applyPlans(plans: { table: IptTable; plan: IptPlan }[]): Promise<void> {
    const payload = plans.map(({ table, plan }) => restorePayload(table, plan.lines) ?? "").join("");
    if (!payload) return;
    this.restore ??= restoreArgv(binOf(this.flavour), await iptVersion(this.exec, binOf(this.flavour)));
    await must(this.exec, this.restore, payload);
  }

  async inspect(rs: RuleSet, includeAbsent: boolean): Promise<Inspection> {
    const plans = await this.plans(rs, includeAbsent);
    return { problems: plans.flatMap((p) => p.plan.problems), fix: () => this.applyPlans(plans) };
  }

  watchTargets(rs: RuleSet): WatchTarget[] | null {
    if (!this.nfTables) return null;
    // iptables-nft keeps table nat/filter in family ip, chains under their iptables names.
    return iptablesSpecs(rs)
      .filter((s) => s.present)
      .flatMap(({ spec }) => [
        { family: "ip", table: spec.table, chain: spec.chain, ours: true },
        { family: "ip", table: spec.table, chain: spec.hook, addsOnlyJumpingTo: spec.chain },
      ]);
  }

  async removeAll(): Promise<string[]> {
    const plans = await this.plans(null, true);
    await this.applyPlans(plans);
    return plans.flatMap((p) => p.plan.problems.map((x) => `${this.kind}: ${x}`));
  }
}

export class NftEngine implements Engine {
  readonly kind = "nftables" as const;
  readonly randomFullySupported = true;
  constructor(private readonly exec: Exec) {}

  private async list(): Promise<ReturnType<typeof parseNftList> | null> {
    const r = await this.exec(["nft", "-j", "list", "table", NFT_FAMILY, NFT_TABLE]);
    if (r.code !== 0) {
      if (/No such file or directory|does not exist/i.test(r.stderr)) return null;
      throw new RulesError(`nft -j list table ${NFT_FAMILY} ${NFT_TABLE} failed (exit ${r.code}): ${r.stderr.trim()}`);
    }
    try {
      return parseNftList(r.stdout);
    } catch (e) {
      throw new RulesError(`nft -j list table ${NFT_FAMILY} ${NFT_TABLE}: unreadable output: ${(e as Error).message}`);
    }
  }

  async inspect(rs: RuleSet, _includeAbsent: boolean): Promise<Inspection> {
    const want = nftChains(rs);
    const listed = await this.list();
    const problems = nftProblems(listed, want);
    // Nothing wanted and no table: nothing to do (not even an empty table).
    const fix = async () => {
      if (problems.length > 0) await must(this.exec, ["nft", "-f", "-"], nftScript(want));
    };
    if (want.length === 0 && listed === null) return { problems: [], fix: async () => {} };
    for (const r of want.flatMap((c) => c.rules)) if (!listed) problems.push(`nftables rule missing: ${r}`);
    return { problems, fix };
  }

  watchTargets(_rs: RuleSet): WatchTarget[] {
    return [{ family: NFT_FAMILY, table: NFT_TABLE, ours: true }];
  }

  async removeAll(): Promise<string[]> {
    const r = await this.exec(["nft", "list", "tables"]);
    if (r.code !== 0) throw new RulesError(`nft list tables failed (exit ${r.code}): ${r.stderr.trim()}`);
    const ours = [`table ${NFT_FAMILY} ${NFT_TABLE}`, "table ip6 flannel-ipv6"].filter((t) => r.stdout.split("\n").includes(t));
    if (ours.length === 0) return [];
    await must(this.exec, ["nft", "-f", "-"], `${ours.map((t) => `delete ${t}`).join("\n")}\n`);
    return ours.map((t) => `nftables: ${t}`);
  }
}

const binOf = (flavour: IptFlavour): string => (flavour === "plain" ? "iptables" : `iptables-${flavour}`);

/** iptables' version: --random-fully and restore --wait need ≥ 1.6.2. */
async function iptVersion(exec: Exec, bin: string): Promise<IptVersion> {
  const r = await exec([bin, "--version"]);
  return r.code === 0 ? parseIptablesVersion(r.stdout + r.stderr) : null;
}

/** A `--version` already read, and of which program (it serves another name that is the same executable). */
export interface KnownVersion {
  bin: string;
  version: IptVersion;
}

/** Whether two program names on PATH are one executable (links and alternatives followed). */
function sameExecutable(a: string, b: string): boolean {
  if (a === b) return true;
  const pa = which(a);
  const pb = which(b);
  try {
    return pa !== null && pb !== null && realpathSync(pa) === realpathSync(pb);
  } catch {
    return false;
  }
}

/** The engine the rules go to: its version read now (or taken from `known`, when that is the same executable). */
export async function makeIptablesEngine(exec: Exec, flavour: IptFlavour, known?: KnownVersion): Promise<IptablesEngine> {
  const bin = binOf(flavour);
  const v = known && sameExecutable(known.bin, bin) ? known.version : await iptVersion(exec, bin);
  return new IptablesEngine(exec, flavour, modern(v), modern(v), flavour === "nft" || (flavour === "plain" && v?.mode === "nft"));
}

/** An engine of the other flavour, only looked at for our leftovers: its version is read only if there are some. */
export function leftoversOfIptables(exec: Exec, flavour: "legacy" | "nft", dump?: string): IptablesEngine {
  const e = new IptablesEngine(exec, flavour, false, null);
  if (dump !== undefined) e.prime(dump);
  return e;
}

/** What the flavour detection read: the choice, and the dumps and version it read on the way (reused, not read again). */
export interface IptablesDetection {
  flavour: IptFlavour;
  why: string;
  /** `iptables-<flavour>-save` output (all tables) of each flavour that could be read. */
  dumps: Partial<Record<"legacy" | "nft", string>>;
  known?: KnownVersion;
}

/**
 * Which iptables this host uses (flannel #1317): the flavour that already holds more rules (Docker, kube-proxy and
 * firewalld all write there), and on a tie (a fresh host) the one `iptables` points at. Never both.
 */
export async function detectIptables(exec: Exec): Promise<IptablesDetection> {
  const both = have("iptables-legacy-save") && have("iptables-nft-save");
  if (!both) {
    if (!have("iptables-save") || !have("iptables-restore"))
      throw new RulesError('iptables-save / iptables-restore not found: install iptables, or use nftables mode ("EnableNFTables": true)');
    return { flavour: "plain", why: "only one iptables is installed", dumps: {} };
  }
  const [legacy, nft] = await Promise.all([exec(["iptables-legacy-save"]), exec(["iptables-nft-save"])]);
  const dumps: IptablesDetection["dumps"] = {};
  if (legacy.code === 0) dumps.legacy = legacy.stdout;
  if (nft.code === 0) dumps.nft = nft.stdout;
  const nl = countRules(dumps.legacy ?? "");
  const nn = countRules(dumps.nft ?? "");
  if (nl > nn) return { flavour: "legacy", why: `iptables-legacy holds ${nl} rules, iptables-nft ${nn}`, dumps };
  if (nn > nl) return { flavour: "nft", why: `iptables-nft holds ${nn} rules, iptables-legacy ${nl}`, dumps };
  const version = await iptVersion(exec, "iptables");
  const flavour = version?.mode === "legacy" ? "legacy" : "nft";
  return { flavour, why: `no rules in either; \`iptables\` is iptables-${flavour}`, dumps, known: { bin: "iptables", version } };
}
