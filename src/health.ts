// The local health API: liveness and readiness for probes (`curl 127.0.0.1:8471/healthz`) and Prometheus /metrics,
// served by hono on Bun.serve.

import { Hono } from "hono";

export interface HealthState {
  ready: boolean;
  /** Extra lines for /readyz when not ready: what the agent is waiting for. */
  waitingFor: string;
  /** Prometheus text for /metrics. */
  metrics?: () => string;
  /** "" when all is well; else what is degraded while ready (a store outage): /readyz stays 200 and says it. */
  degraded?: () => string;
}

export function healthApp(state: HealthState): Hono {
  const app = new Hono();
  app.get("/metrics", (c) => c.text(state.metrics?.() ?? "", 200, { "content-type": "text/plain; version=0.0.4" }));
  app.all("/healthz", (c) => c.text("flannel-bin is running"));
  app.all("/readyz", (c) =>
    state.ready
      ? c.text(`flannel-bin is ready${state.degraded?.() ? ` (degraded: ${state.degraded()})` : ""}`)
      : c.text(`flannel-bin is not ready yet${state.waitingFor ? `: ${state.waitingFor}` : ""}`, 503),
  );
  return app;
}

export function serveHealth(state: HealthState, hostname: string, port: number): { stop(): Promise<void>; port: number } {
  const server = Bun.serve({ hostname, port, fetch: healthApp(state).fetch });
  return { port: server.port ?? port, stop: () => server.stop(true) };
}
