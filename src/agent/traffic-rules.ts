// The traffic-rules step (masquerade and forward rules, flannel-compat §7): installed after the data plane and
// before subnet.env is written, so READY=1 and /readyz 200 mean the rules are in. The agent knows rules only
// through this interface; an engine (iptables, nftables) plugs in by returning one from createTrafficRules().
import type { NetworkConfig } from "../config.ts";
import type { FlagValue } from "../flags.ts";
import type { Lease } from "../lease.ts";
import { agentTrafficRules } from "../rules/step.ts";

export interface TrafficRulesContext {
  config: NetworkConfig;
  lease: Lease;
  flags: Record<string, FlagValue>;
  /** subnet.env, not yet rewritten: the previous run's FLANNEL_NETWORK / FLANNEL_SUBNET name the old rule set. */
  subnetFile: string;
  signal: AbortSignal;
}

export interface TrafficRules {
  /** Installs the rules; throws with a message naming what failed (the agent retries with backoff, not ready). */
  install(): Promise<void>;
  /** null when every rule is in place, else why not (checked periodically; holds readiness back). */
  ready(): string | null;
  /** Stops keeping the rules (and their watchers). Rules stay in place on exit, as flanneld leaves them. */
  stop(): void;
  /** Repairs, failed syncs and processes started so far, for /metrics. */
  stats?(): { repaired: number; failures: number; processesSpawned?: number };
}

/** No rule engine: nothing to install, always in place. */
export const noTrafficRules: TrafficRules = {
  install: async () => {},
  ready: () => null,
  stop: () => {},
};

/** The one place that picks a rule engine for the agent: src/rules/ (iptables, or nftables with "EnableNFTables"). */
export function createTrafficRules(ctx: TrafficRulesContext): TrafficRules {
  if (!ctx.config.network) return noTrafficRules; // IPv4 rules only; no IPv4 network, nothing to install
  return agentTrafficRules({
    flags: ctx.flags,
    network: ctx.config.network,
    subnet: ctx.lease.subnet,
    nftables: ctx.config.enableNFTables,
    subnetFile: ctx.subnetFile,
    signal: ctx.signal,
  });
}
