// What the long-lived watchers print, one line at a time: `nft monitor rules` and `ip -4 -o monitor route`. It is
// another process's output about a ruleset anyone on the host may write: split with a bounded buffer, only each line's
// head is looked at, and nothing here logs it (a caller that does goes through escapeLogText). Pure functions.
import type { MonitorLine } from "../supervised-process.ts";

export type { MonitorLine } from "../supervised-process.ts";

/** A rule event of `nft monitor rules`: `add rule ip filter FORWARD …`, `delete rule ip nat POSTROUTING handle 7`. */
export interface NftRuleEvent {
  op: "add" | "delete";
  family: string;
  table: string;
  chain: string;
  /** What follows the chain (the rule, or `handle N`). */
  rest: string[];
  truncated: boolean;
}

const ADDS = new Set(["add", "insert", "replace", "create"]);
const DELETES = new Set(["delete", "destroy"]);

export function parseNftRuleEvent(line: MonitorLine): NftRuleEvent | null {
  const t = line.text.trim().split(/\s+/);
  const op = ADDS.has(t[0] ?? "") ? "add" : DELETES.has(t[0] ?? "") ? "delete" : null;
  if (!op || t[1] !== "rule" || t.length < 5) return null;
  return { op, family: t[2]!, table: t[3]!, chain: t[4]!, rest: t.slice(5), truncated: line.truncated };
}

/**
 * Where a change can touch our rules: a whole table (nftables mode: every rule event in `ip flannel-ipv4`), our own
 * chain (every event), or the built-in chain holding our jump (every delete, and only adds that jump to our chain:
 * Docker or kube-proxy adding their own rules to FORWARD/POSTROUTING cannot remove ours).
 */
export interface WatchTarget {
  family: string;
  table: string;
  chain?: string;
  addsOnlyJumpingTo?: string;
  /** Only we write here (our own chain or table): a delete is one of our rules gone, never another tool's churn. */
  ours?: boolean;
}

export function nftEventMatters(ev: NftRuleEvent, targets: WatchTarget[]): boolean {
  return targets.some((t) => {
    if (ev.family !== t.family || ev.table !== t.table || (t.chain !== undefined && ev.chain !== t.chain)) return false;
    if (ev.op === "delete" || t.addsOnlyJumpingTo === undefined || ev.truncated) return true;
    return ev.rest.some((w, i) => (w === "jump" || w === "goto") && ev.rest[i + 1] === t.addsOnlyJumpingTo);
  });
}

/** A delete in a target only we write: one of our rules was removed (checked at once, never rate-limited). */
export function nftEventRemovesOurs(ev: NftRuleEvent, targets: WatchTarget[]): boolean {
  return (
    ev.op === "delete" &&
    targets.some(
      (t) => t.ours === true && ev.family === t.family && ev.table === t.table && (t.chain === undefined || ev.chain === t.chain),
    )
  );
}

/** An `ip -4 -o monitor route` line about our subnet's prefix (the blackhole route deleted, or replaced by another). */
export function routeLineMatters(line: MonitorLine, subnet: string): boolean {
  return line.text.split(/\s+/).includes(subnet);
}
