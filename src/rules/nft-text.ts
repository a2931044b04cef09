// flanneld's nftables mode ("EnableNFTables": true, docs/flannel-compat.md §7): table `ip flannel-ipv4` with chain postrtg
// (nat, postrouting hook, srcnat) and chain forward (filter, forward hook). Built as one `nft -f -` script that
// replaces the table in a single transaction, and checked against `nft -j list table` in one read. Pure functions.

import type { RuleSet } from "./types.ts";

export const NFT_FAMILY = "ip";
export const NFT_TABLE = "flannel-ipv4";

export interface NftChainSpec {
  name: string;
  type: "nat" | "filter";
  hook: "postrouting" | "forward";
  /** Numeric priority as `nft -j` reports it: srcnat = 100, filter = 0. */
  prio: number;
  prioName: "srcnat" | "filter";
  /** Rules in nft syntax, in order; also the canonical form the JSON listing is rendered to. */
  rules: string[];
}

export function nftChains(rs: RuleSet): NftChainSpec[] {
  // nft lists a /32 as a bare address; write it that way so the check compares like with like.
  const N = rs.network.replace(/\/32$/, "");
  const P = rs.subnet.replace(/\/32$/, "");
  const masq = rs.randomFully ? "masquerade fully-random" : "masquerade";
  const out: NftChainSpec[] = [];
  if (rs.masq)
    out.push({
      name: "postrtg",
      type: "nat",
      hook: "postrouting",
      prio: 100,
      prioName: "srcnat",
      rules: [
        "meta mark 0x4000 return", // kube-proxy marked
        `ip saddr ${P} ip daddr ${N} return`,
        `ip saddr ${N} ip daddr ${P} return`,
        `ip saddr != ${P} ip daddr ${N} return`, // flanneld's nftables variant of "external -> local pod"
        `ip saddr ${N} ip daddr != 224.0.0.0/4 ${masq}`,
        `ip saddr != ${N} ip daddr ${N} ${masq}`,
      ],
    });
  if (rs.forward)
    out.push({
      name: "forward",
      type: "filter",
      hook: "forward",
      prio: 0,
      prioName: "filter",
      rules: [`ip saddr ${N} accept`, `ip daddr ${N} accept`],
    });
  return out;
}

/**
 * The `nft -f -` script: `add table` + `delete table` + the full table, so one transaction replaces whatever is there
 * (or removes it when no chain is wanted) and there is never a moment without rules.
 */
export function nftScript(chains: NftChainSpec[]): string {
  const lines = [`add table ${NFT_FAMILY} ${NFT_TABLE}`, `delete table ${NFT_FAMILY} ${NFT_TABLE}`];
  if (chains.length === 0) return `${lines.join("\n")}\n`;
  lines.push(`table ${NFT_FAMILY} ${NFT_TABLE} {`);
  for (const c of chains) {
    lines.push(`  chain ${c.name} {`, `    type ${c.type} hook ${c.hook} priority ${c.prioName}; policy accept;`);
    for (const r of c.rules) lines.push(`    ${r}`);
    lines.push("  }");
  }
  lines.push("}");
  return `${lines.join("\n")}\n`;
}

export interface NftListed {
  chains: Map<string, { type?: string; hook?: string; prio?: number; policy?: string; rules: string[] }>;
}

/** Parses `nft -j list table ip flannel-ipv4`: chains and each rule rendered to nft syntax (unknown parts as "?"). */
export function parseNftList(json: string): NftListed {
  const out: NftListed = { chains: new Map() };
  const doc = JSON.parse(json) as { nftables?: Record<string, unknown>[] };
  for (const item of doc.nftables ?? []) {
    if (item.chain) {
      const c = item.chain as Record<string, unknown>;
      out.chains.set(String(c.name), {
        type: typeof c.type === "string" ? c.type : undefined,
        hook: typeof c.hook === "string" ? c.hook : undefined,
        prio: typeof c.prio === "number" ? c.prio : undefined,
        policy: typeof c.policy === "string" ? c.policy : undefined,
        rules: [],
      });
    } else if (item.rule) {
      const r = item.rule as { chain?: unknown; expr?: unknown };
      const chain = out.chains.get(String(r.chain));
      if (chain) chain.rules.push(renderExprs(Array.isArray(r.expr) ? r.expr : []));
    }
  }
  return out;
}

function renderExprs(exprs: unknown[]): string {
  return exprs.map(renderExpr).join(" ");
}

function renderValue(v: unknown): string {
  if (typeof v === "string") return v;
  if (typeof v === "number") return String(v);
  const o = v as { prefix?: { addr?: unknown; len?: unknown } } | null;
  if (o?.prefix && typeof o.prefix.addr === "string" && typeof o.prefix.len === "number") return `${o.prefix.addr}/${o.prefix.len}`;
  return "?";
}

function renderExpr(e: unknown): string {
  const x = e as Record<string, unknown>;
  if (x === null || typeof x !== "object") return "?";
  if ("match" in x) {
    const m = x.match as { op?: string; left?: Record<string, Record<string, unknown>>; right?: unknown };
    const op = m.op === "!=" ? "!= " : "";
    const left = m.left ?? {};
    if (left.payload && typeof left.payload.protocol === "string" && typeof left.payload.field === "string")
      return `${left.payload.protocol} ${left.payload.field} ${op}${renderValue(m.right)}`;
    if (left.meta && left.meta.key === "mark" && typeof m.right === "number") return `meta mark ${op}0x${m.right.toString(16)}`;
    return "?";
  }
  if ("return" in x) return "return";
  if ("accept" in x) return "accept";
  if ("masquerade" in x) {
    const flags = (x.masquerade as { flags?: unknown } | null)?.flags;
    const list = Array.isArray(flags) ? flags : typeof flags === "string" ? [flags] : [];
    return ["masquerade", ...list.map(String)].join(" ");
  }
  if ("counter" in x) return "counter";
  return "?";
}

/** What differs between the listed table (null = no table) and the wanted chains, for the log and /readyz. */
export function nftProblems(listed: NftListed | null, want: NftChainSpec[]): string[] {
  const problems: string[] = [];
  if (!listed) {
    if (want.length > 0) problems.push(`nftables table ${NFT_FAMILY} ${NFT_TABLE} missing`);
    return problems;
  }
  if (want.length === 0) return [`nftables table ${NFT_FAMILY} ${NFT_TABLE} left over`];
  for (const c of want) {
    const have = listed.chains.get(c.name);
    if (!have) {
      problems.push(`nftables chain ${c.name} missing`);
      continue;
    }
    if (have.type !== c.type || have.hook !== c.hook || have.prio !== c.prio || (have.policy ?? "accept") !== "accept")
      problems.push(`nftables chain ${c.name} has the wrong type, hook or priority`);
    const missing = c.rules.filter((r) => !have.rules.includes(r));
    for (const r of missing) problems.push(`nftables rule missing in ${c.name}: ${r}`);
    if (missing.length === 0 && (have.rules.length !== c.rules.length || have.rules.some((r, i) => r !== c.rules[i])))
      problems.push(`nftables chain ${c.name}: rules out of order or extra rules in it`);
  }
  for (const name of listed.chains.keys())
    if (!want.some((c) => c.name === name)) problems.push(`nftables chain ${name} is not ours to keep (feature off)`);
  return problems;
}
