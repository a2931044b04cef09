// The agent's traffic-rules step: flags and network config in, a TrafficRulesStep out. Reads the previous run's
// subnet.env (before the agent rewrites it) so rules built from an old Network or subnet are replaced.

import type { FlagValue } from "../flags.ts";
import { type IPNet, formatCIDR, tryParseCIDR } from "../ipmath.ts";
import { logger } from "../log.ts";
import { SUBNET_ENV_MAX_BYTES, parseEnvFile, readSmallRegularFile } from "../subnet-env.ts";
import { TrafficRules, type TrafficRulesStats, type TrafficRulesStep } from "./traffic-rules.ts";

/** FLANNEL_NETWORK and FLANNEL_SUBNET (masked to its network) of an existing subnet.env; null when unreadable. */
export function previousNetworks(path: string): { network: string | null; subnet: string | null } | null {
  const text = readSmallRegularFile(path, SUBNET_ENV_MAX_BYTES); // never a FIFO or an unbounded read
  if (text === null) return null;
  const env = parseEnvFile(text);
  const one = (v: string | undefined) => {
    const n = v && !v.includes(",") ? tryParseCIDR(v.trim()) : null;
    return n && n.family === 4 ? formatCIDR(n) : null;
  };
  return { network: one(env.FLANNEL_NETWORK), subnet: one(env.FLANNEL_SUBNET) };
}

export function trafficRulesStep(
  f: Record<string, FlagValue>,
  net: { network: IPNet; subnet: IPNet; nftables: boolean; subnetFile: string },
): TrafficRulesStep {
  return new TrafficRules({
    network: formatCIDR(net.network),
    subnet: formatCIDR(net.subnet),
    masq: f["ip-masq"] === true,
    forward: f["iptables-forward-rules"] !== false,
    fullyRandomDisable: f["ip-masq-fully-random-disable"] === true,
    blackhole: f["ip-blackhole-route"] === true,
    resyncMs: Number(f["iptables-resync"] ?? 5) * 1000,
    safetyNetMs: typeof f["reconcile-interval"] === "number" ? f["reconcile-interval"] : undefined,
    nftables: net.nftables,
    previous: previousNetworks(net.subnetFile),
    log: logger("rules"),
  });
}

/** For /readyz: the first few missing rules, then how many more. */
export function describeMissing(missing: string[]): string {
  const head = missing.slice(0, 3).join("; ");
  return missing.length > 3 ? `${head}; and ${missing.length - 3} more` : head;
}

/**
 * The step in the agent's shape: install() throws naming what is missing (the agent retries and holds readiness),
 * the first success starts keeping the rules (until the signal or stop()), ready() says what is missing meanwhile.
 */
export function agentTrafficRules(ctx: {
  flags: Record<string, FlagValue>;
  network: IPNet;
  subnet: IPNet;
  nftables: boolean;
  subnetFile: string;
  signal: AbortSignal;
}): { install(): Promise<void>; ready(): string | null; stop(): void; stats(): TrafficRulesStats } {
  const step = trafficRulesStep(ctx.flags, ctx);
  let running = false;
  return {
    async install() {
      if (!(await step.install())) throw new Error(describeMissing(step.missing()));
      if (running) return;
      running = true;
      void step.run(ctx.signal);
    },
    ready: () => (step.missing().length > 0 ? `traffic rules: ${describeMissing(step.missing())}` : null),
    stop: () => step.stop(), // the watchers go; the rules stay in place
    stats: () => step.stats,
  };
}
