// The local health API: liveness and readiness for probes (`curl 127.0.0.1:8471/healthz`) and Prometheus /metrics,
// served by hono on Bun.serve. hono/quick: its linear router has no build step, where the default router compiled its
// matchers on the first probe (~2-5 ms of CPU at start, ~3% of a join-storm agent's; quick: ~0.5 ms).

import { Hono } from "hono/quick";

export interface HealthState {
  ready: boolean;
  /** Extra lines for /readyz when not ready: what the agent is waiting for. */
  waitingFor: string;
  /** Prometheus text for /metrics. */
  metrics?: () => string;
  /** "" when all is well; else what is degraded while ready (a store outage): /readyz stays 200 and says it. */
  degraded?: () => string;
}

/** The API as a fetch handler: /metrics (GET, HEAD), /healthz and /readyz (any method); anything else is 404. */
export function healthHandler(state: HealthState): (req: Request) => Response | Promise<Response> {
  const app = new Hono();
  app.get("/metrics", (c) => c.text(state.metrics?.() ?? "", 200, { "content-type": "text/plain; version=0.0.4" }));
  app.all("/healthz", (c) => c.text("flannel-bin is running"));
  app.all("/readyz", (c) => {
    if (!state.ready) return c.text(`flannel-bin is not ready yet${state.waitingFor ? `: ${state.waitingFor}` : ""}`, 503);
    const degraded = state.degraded?.();
    return c.text(`flannel-bin is ready${degraded ? ` (degraded: ${degraded})` : ""}`);
  });
  return app.fetch;
}

export function serveHealth(state: HealthState, hostname: string, port: number): { stop(): Promise<void>; port: number } {
  const server = Bun.serve({ hostname, port, fetch: healthHandler(state) });
  return { port: server.port ?? port, stop: () => server.stop(true) };
}
