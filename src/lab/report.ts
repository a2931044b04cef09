// What `lab up` and `lab status` show: each host (subnet, MTU, agent alive/ready) and each container pair's ping.
import { agentAlive, agentReady, readSubnetEnv } from "./agents.ts";
import { type PairReport, pingAllPairs } from "./ping.ts";
import type { LabBackend, LabState, LabStoreKind } from "./state.ts";

export interface HostReport {
  host: string;
  subnet: string | null;
  mtu: number | null;
  publicIP: string;
  backend: LabBackend;
  agentAlive: boolean;
  ready: boolean;
}

export interface LabReport {
  name: string;
  backend: LabBackend;
  store: LabStoreKind;
  hosts: HostReport[];
  pairs: PairReport[];
  ok: boolean;
}

export async function labReport(s: LabState, opts: { converge?: boolean; pingCount?: number; pings?: boolean } = {}): Promise<LabReport> {
  const hosts: HostReport[] = [];
  for (const h of s.hosts) {
    const env = readSubnetEnv(h);
    const alive = agentAlive(h);
    hosts.push({
      host: h.netns,
      subnet: env?.subnet ?? null,
      mtu: env?.mtu ?? null,
      publicIP: h.publicIP,
      backend: s.backend,
      agentAlive: alive,
      ready: alive && (await agentReady(h)),
    });
  }
  const pairs = opts.pings === false ? [] : await pingAllPairs(s, { converge: opts.converge, count: opts.pingCount ?? 3 });
  return { name: s.name, backend: s.backend, store: s.store, hosts, pairs, ok: pairs.every((p) => p.ok) };
}

/** Human-readable tables: hosts, then one line per pair. */
export function formatLabReport(r: LabReport): string {
  const pad = (cells: string[], widths: number[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join("  ")
      .trimEnd();
  const table = (head: string[], rows: string[][]) => {
    const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? "").length)));
    return [
      pad(head, widths),
      pad(
        widths.map((w) => "-".repeat(w)),
        widths,
      ),
      ...rows.map((row) => pad(row, widths)),
    ].join("\n");
  };
  const hostRows = r.hosts.map((h) => [
    h.host,
    h.subnet ?? "-",
    h.publicIP,
    h.backend,
    h.mtu === null ? "-" : String(h.mtu),
    h.agentAlive ? (h.ready ? "ready" : "alive, not ready") : "not running",
  ]);
  const pairRows = r.pairs.map((p) => [
    p.from,
    p.to,
    p.toIP,
    p.ok ? "ok" : "FAIL",
    p.rttMs === null ? "-" : `${p.rttMs.toFixed(3)} ms`,
    p.detail,
  ]);
  const okCount = r.pairs.filter((p) => p.ok).length;
  return [
    `lab ${r.name}: backend ${r.backend}, store ${r.store}`,
    "",
    table(["HOST", "SUBNET", "PUBLIC IP", "BACKEND", "MTU", "AGENT"], hostRows),
    "",
    table(["FROM", "TO", "TARGET", "PING", "AVG RTT", "DETAIL"], pairRows),
    "",
    `${okCount}/${r.pairs.length} pairs reachable`,
  ].join("\n");
}
