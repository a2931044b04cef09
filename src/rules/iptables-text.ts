// flanneld's iptables rules as text (docs/flannel-compat.md §7), the `iptables-save` output they are checked against, and the
// one `iptables-restore --noflush` payload that brings a table from what is there to what should be. Pure functions:
// nothing here runs a command, so every byte an operator sees in `iptables-save` is covered by unit tests.

import type { RuleSet } from "./types.ts";

export type IptTable = "nat" | "filter";

/** Our chain in one table: the jump from a built-in chain, and the chain's rules in order. */
export interface IptChainSpec {
  table: IptTable;
  /** Built-in chain holding our jump (POSTROUTING, FORWARD). */
  hook: string;
  chain: string;
  /** The jump rule exactly as iptables-save prints it. */
  jump: string;
  /** Our chain's rules exactly as iptables-save prints them, in order. */
  rules: string[];
}

export const MASQ_CHAIN = "FLANNEL-POSTRTG";
export const FWD_CHAIN = "FLANNEL-FWD";
const MASQ_COMMENT = '-m comment --comment "flanneld masq"';
const FWD_COMMENT = '-m comment --comment "flanneld forward"';

/** flanneld's six masquerade rules for Network N and own subnet P (§7), `--random-fully` when asked. */
export function masqChain(network: string, subnet: string, randomFully: boolean): IptChainSpec {
  const rf = randomFully ? " --random-fully" : "";
  const r = (m: string, target: string) => `-A ${MASQ_CHAIN} ${m}${m ? " " : ""}${MASQ_COMMENT} -j ${target}`;
  return {
    table: "nat",
    hook: "POSTROUTING",
    chain: MASQ_CHAIN,
    jump: `-A POSTROUTING ${MASQ_COMMENT} -j ${MASQ_CHAIN}`,
    rules: [
      r("-m mark --mark 0x4000/0x4000", "RETURN"), // kube-proxy marked: leave alone
      r(`-s ${subnet} -d ${network}`, "RETURN"), // pod -> cluster: no NAT
      r(`-s ${network} -d ${subnet}`, "RETURN"),
      r(`! -s ${network} -d ${subnet}`, "RETURN"), // outside -> local pod: no NAT
      r(`-s ${network} ! -d 224.0.0.0/4`, `MASQUERADE${rf}`), // pod -> outside (not multicast)
      r(`! -s ${network} -d ${network}`, `MASQUERADE${rf}`), // host -> cluster
    ],
  };
}

/** flanneld's forward rules: accept everything from and to the Network (Docker ≥ 1.13 sets FORWARD to DROP). */
export function forwardChain(network: string): IptChainSpec {
  return {
    table: "filter",
    hook: "FORWARD",
    chain: FWD_CHAIN,
    jump: `-A FORWARD ${FWD_COMMENT} -j ${FWD_CHAIN}`,
    rules: [`-A ${FWD_CHAIN} -s ${network} ${FWD_COMMENT} -j ACCEPT`, `-A ${FWD_CHAIN} -d ${network} ${FWD_COMMENT} -j ACCEPT`],
  };
}

/** Our chain in a table when its feature is off: nothing in it, and its jump is removed if found. */
export function absentChain(table: IptTable): IptChainSpec {
  const c = table === "nat" ? masqChain("0.0.0.0/0", "0.0.0.0/0", false) : forwardChain("0.0.0.0/0");
  return { ...c, rules: [] };
}

/** The wanted chain per table for a rule set; a disabled feature gives an absent chain (rules: [] and `absent`). */
export function iptablesSpecs(rs: RuleSet): { spec: IptChainSpec; present: boolean }[] {
  return [
    rs.masq ? { spec: masqChain(rs.network, rs.subnet, rs.randomFully), present: true } : { spec: absentChain("nat"), present: false },
    rs.forward ? { spec: forwardChain(rs.network), present: true } : { spec: absentChain("filter"), present: false },
  ];
}

/** One table of `iptables-save -t <table>`: which chains exist and every rule line per chain, in order. */
export interface SavedTable {
  chains: Set<string>;
  rules: Map<string, string[]>;
}

/** Parses `iptables-save` output; only the table asked for (comments, counters and other tables are skipped). */
export function parseIptablesSave(text: string, table: IptTable): SavedTable {
  const out: SavedTable = { chains: new Set(), rules: new Map() };
  let inTable = false;
  for (const raw of text.split("\n")) {
    const line = raw.trimEnd();
    if (line.startsWith("*")) inTable = line === `*${table}`;
    else if (!inTable || line.startsWith("#") || line === "") continue;
    else if (line === "COMMIT") inTable = false;
    else if (line.startsWith(":")) out.chains.add(line.slice(1).split(" ")[0]!);
    else if (line.startsWith("-A ")) {
      const chain = line.slice(3).split(" ")[0]!;
      const list = out.rules.get(chain) ?? [];
      list.push(line);
      out.rules.set(chain, list);
    }
  }
  return out;
}

export interface IptPlan {
  /** What is missing or wrong, for the log and /readyz ("nat FLANNEL-POSTRTG chain missing", ...); empty = in place. */
  problems: string[];
  /** The lines between `*table` and COMMIT that fix it, or none when nothing is to do. */
  lines: string[];
}

const deleteOf = (rule: string) => `-D${rule.slice(2)}`;

/**
 * The change that turns `saved` into `spec` (present) or removes our chain and jump (absent), touching nothing else:
 * - our chain with other contents: declared (`:CHAIN - [0:0]`, which iptables-restore --noflush creates or flushes)
 *   and refilled in order, in the same transaction, so there is no moment without the rules;
 * - the jump: appended at the end of the built-in chain when missing (flanneld appends too), extra copies deleted;
 * - absent: every copy of the jump deleted, then the chain flushed and deleted.
 */
export function planIptables(spec: IptChainSpec, present: boolean, saved: SavedTable): IptPlan {
  const problems: string[] = [];
  const lines: string[] = [];
  const jumps = (saved.rules.get(spec.hook) ?? []).filter((l) => l === spec.jump).length;
  const have = saved.rules.get(spec.chain) ?? [];
  const exists = saved.chains.has(spec.chain);
  if (!present) {
    if (jumps > 0) problems.push(`${spec.table} ${spec.hook} jump to ${spec.chain} left over`);
    if (exists) problems.push(`${spec.table} ${spec.chain} chain left over`);
    for (let i = 0; i < jumps; i++) lines.push(deleteOf(spec.jump));
    if (exists) lines.push(`:${spec.chain} - [0:0]`, `-X ${spec.chain}`);
    return { problems, lines };
  }
  if (!exists) problems.push(`${spec.table} ${spec.chain} chain missing`, ...spec.rules.map((r) => `${spec.table} rule missing: ${r}`));
  else if (!sameList(have, spec.rules)) {
    const missing = spec.rules.filter((r) => !have.includes(r));
    for (const r of missing) problems.push(`${spec.table} rule missing: ${r}`);
    if (missing.length === 0) problems.push(`${spec.table} ${spec.chain} rules out of order or extra rules in it`);
  }
  if (!exists || !sameList(have, spec.rules)) lines.push(`:${spec.chain} - [0:0]`, ...spec.rules);
  if (jumps === 0) {
    problems.push(`${spec.table} rule missing: ${spec.jump}`);
    lines.push(spec.jump);
  }
  for (let i = 1; i < jumps; i++) lines.push(deleteOf(spec.jump)); // a duplicate jump (flannel #1337); keep one
  if (jumps > 1) problems.push(`${spec.table} ${spec.hook} has ${jumps} jumps to ${spec.chain}`);
  return { problems, lines };
}

const sameList = (a: string[], b: string[]) => a.length === b.length && a.every((x, i) => x === b[i]);

/** The iptables-restore input for one table, or null when there is nothing to change. */
export function restorePayload(table: IptTable, lines: string[]): string | null {
  return lines.length === 0 ? null : `*${table}\n${lines.join("\n")}\nCOMMIT\n`;
}

/** The version in `iptables --version` ("iptables v1.8.9 (nf_tables)"), or null. */
export function parseIptablesVersion(text: string): { version: [number, number, number]; mode: "nft" | "legacy" | null } | null {
  const m = /v(\d+)\.(\d+)\.(\d+)(?:\s+\((nf_tables|legacy)\))?/.exec(text);
  if (!m) return null;
  return { version: [Number(m[1]), Number(m[2]), Number(m[3])], mode: m[4] === "nf_tables" ? "nft" : m[4] === "legacy" ? "legacy" : null };
}

/** `--random-fully` and `iptables-restore --wait` need iptables ≥ 1.6.2 (as flanneld checks). */
export function atLeast(v: [number, number, number], want: [number, number, number]): boolean {
  for (let i = 0; i < 3; i++) if (v[i] !== want[i]) return v[i]! > want[i]!;
  return true;
}

/** Rule lines in an `iptables-save` dump (all tables): how much a host uses this iptables flavour. */
export const countRules = (text: string): number => text.split("\n").filter((l) => l.startsWith("-A ")).length;
