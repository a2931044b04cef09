import { expect, test } from "bun:test";
import { type HealthState, healthHandler } from "../../src/health.ts";

/** A request to the handler, by path. */
const request = async (state: HealthState, path: string, method = "GET") =>
  await healthHandler(state)(new Request(`http://127.0.0.1${path}`, { method }));

test("healthz always 200, readyz 503 until ready", async () => {
  const state = { ready: false, waitingFor: "lease" };
  const h = await request(state, "/healthz");
  expect(h.status).toBe(200);
  expect(await h.text()).toBe("flannel-bin is running");
  const r1 = await request(state, "/readyz");
  expect(r1.status).toBe(503);
  expect(await r1.text()).toContain("not ready yet: lease");
  state.ready = true;
  const r2 = await request(state, "/readyz");
  expect(r2.status).toBe(200);
  expect(await r2.text()).toBe("flannel-bin is ready");
  expect((await request(state, "/other")).status).toBe(404);
  expect((await request(state, "/metrics", "POST")).status).toBe(404);
  expect((await request(state, "/healthz", "HEAD")).status).toBe(200);
});

test("metrics in Prometheus text format", async () => {
  const { renderMetrics } = await import("../../src/metrics.ts");
  const state = {
    ready: true,
    waitingFor: "",
    metrics: () =>
      renderMetrics({
        ready: () => true,
        leaseExpiresAt: () => 1_700_000_000_000,
        peers: () => 3,
        ignoredPeers: () => 1,
        leaseRenewals: () => 2,
        storeErrors: () => 0,
        queue: () => ({ sent: 10, failed: 1, retried: 2, batches: 4 }),
        reconcile: () => null,
      }),
  };
  const r = await request(state, "/metrics");
  expect(r.status).toBe(200);
  const text = await r.text();
  expect(text).toContain("# TYPE flannel_bin_peers gauge\nflannel_bin_peers 3\n");
  expect(text).toContain("flannel_bin_lease_expiry_timestamp_seconds 1700000000\n");
  expect(text).toContain("flannel_bin_kernel_commands_failed_total 1\n");
  expect(text).not.toContain("reconcile_runs");
});
