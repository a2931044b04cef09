// /metrics in Prometheus text format: what flannel never exposed (field notes §1.13): lease expiry, peers,
// kernel command results and reconcile repairs. The agent owns the numbers; this only renders them.

import { storeHealth } from "./store-health.ts";

export interface MetricsSource {
  ready: () => boolean;
  leaseExpiresAt: () => number | null | undefined;
  peers: () => number;
  ignoredPeers: () => number;
  leaseRenewals: () => number;
  storeErrors: () => number;
  queue: () => { sent: number; failed: number; retried: number; batches: number } | null;
  reconcile: () => {
    fullRuns: number;
    removed: number;
    repaired: number;
    lastFullMs?: number;
    eventRepairs?: number;
    processesSpawned?: number;
  } | null;
  rules?: () => { repaired: number; failures: number; processesSpawned?: number } | null;
}

type Sample = [name: string, type: "gauge" | "counter", help: string, value: number | null | undefined];

export function renderMetrics(m: MetricsSource): string {
  const q = m.queue();
  const r = m.reconcile();
  const exp = m.leaseExpiresAt();
  const rules = m.rules?.();
  const samples: Sample[] = [
    ["flannel_bin_ready", "gauge", "1 once the lease is held, subnet.env written and peers programmed", m.ready() ? 1 : 0],
    [
      "flannel_bin_lease_expiry_timestamp_seconds",
      "gauge",
      "when the held lease expires (absent for a reservation)",
      exp ? exp / 1000 : undefined,
    ],
    ["flannel_bin_peers", "gauge", "peer leases programmed into the kernel", m.peers()],
    ["flannel_bin_peers_ignored", "gauge", "peer leases ignored (other backend, invalid data)", m.ignoredPeers()],
    ["flannel_bin_lease_renewals_total", "counter", "successful lease renewals", m.leaseRenewals()],
    ["flannel_bin_store_errors_total", "counter", "failed store operations and watch breaks (retried)", m.storeErrors()],
    ["flannel_bin_store_up", "gauge", "1 while the store answers, 0 during an outage (peers and routes are kept)", storeHealth.up ? 1 : 0],
    [
      "flannel_bin_watch_lag_seconds",
      "gauge",
      "how long the store watch has been behind the store (0 = caught up)",
      storeHealth.lagSeconds(),
    ],
    ["flannel_bin_kernel_commands_total", "counter", "iproute2 commands sent", q?.sent],
    ["flannel_bin_kernel_commands_failed_total", "counter", "iproute2 commands that failed after retries", q?.failed],
    ["flannel_bin_kernel_commands_retried_total", "counter", "iproute2 command retries", q?.retried],
    ["flannel_bin_kernel_batches_total", "counter", "ip/bridge batch runs (same-tool command runs, in kept or new processes)", q?.batches],
    ["flannel_bin_reconcile_runs_total", "counter", "full kernel reconciles", r?.fullRuns],
    ["flannel_bin_reconcile_repaired_total", "counter", "kernel entries found missing or changed and put back", r?.repaired],
    ["flannel_bin_reconcile_removed_total", "counter", "stale kernel entries we owned and removed", r?.removed],
    [
      "flannel_bin_rules_repaired_total",
      "counter",
      "traffic rules (iptables/nftables, blackhole route) found missing and put back",
      rules?.repaired,
    ],
    ["flannel_bin_rules_sync_failures_total", "counter", "traffic rule checks or fixes that failed (retried)", rules?.failures],
    [
      "flannel_bin_rules_processes_spawned_total",
      "counter",
      "processes the traffic-rules step started (iptables/nft reads and fixes, its monitors)",
      rules?.processesSpawned,
    ],
    [
      "flannel_bin_reconcile_last_duration_seconds",
      "gauge",
      "how long the last full reconcile took",
      r?.fullRuns ? (r.lastFullMs ?? 0) / 1000 : undefined,
    ],
    ["flannel_bin_kernel_event_repairs_total", "counter", "kernel monitor events that led to a repair", r?.eventRepairs],
    ["flannel_bin_kernel_processes_spawned_total", "counter", "iproute2 processes started (batches, reads, monitors)", r?.processesSpawned],
  ];
  let out = "";
  for (const [name, type, help, v] of samples) {
    if (v === undefined || v === null) continue;
    out += `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${name} ${v}\n`;
  }
  out += "# HELP flannel_bin_watch_restarts_total store watch restarts by the supervisor, by reason (stale, error, ended)\n";
  out += "# TYPE flannel_bin_watch_restarts_total counter\n";
  for (const [reason, n] of Object.entries(storeHealth.watchRestarts)) out += `flannel_bin_watch_restarts_total{reason="${reason}"} ${n}\n`;
  return out;
}
