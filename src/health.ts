// The local health API: liveness and readiness for probes (`curl 127.0.0.1:8471/healthz`) and Prometheus /metrics,
// on Bun.serve. Three fixed paths: a switch, no router (a router's start-up cost was most of a probe's).

export interface HealthState {
  ready: boolean;
  /** Extra lines for /readyz when not ready: what the agent is waiting for. */
  waitingFor: string;
  /** Prometheus text for /metrics. */
  metrics?: () => string;
  /** "" when all is well; else what is degraded while ready (a store outage): /readyz stays 200 and says it. */
  degraded?: () => string;
}

const TEXT = { "content-type": "text/plain; charset=UTF-8" };
const text = (body: string, status = 200, headers: Record<string, string> = TEXT) => new Response(body, { status, headers });

/** The API as a fetch handler: /metrics (GET, HEAD), /healthz and /readyz (any method); anything else is 404. */
export function healthHandler(state: HealthState): (req: Request) => Response {
  return (req) => {
    switch (new URL(req.url).pathname) {
      case "/metrics":
        if (req.method !== "GET" && req.method !== "HEAD") break;
        return text(state.metrics?.() ?? "", 200, { "content-type": "text/plain; version=0.0.4" });
      case "/healthz":
        return text("flannel-bin is running");
      case "/readyz": {
        if (!state.ready) return text(`flannel-bin is not ready yet${state.waitingFor ? `: ${state.waitingFor}` : ""}`, 503);
        const degraded = state.degraded?.();
        return text(`flannel-bin is ready${degraded ? ` (degraded: ${degraded})` : ""}`);
      }
    }
    return text("404 Not Found", 404);
  };
}

export function serveHealth(state: HealthState, hostname: string, port: number): { stop(): Promise<void>; port: number } {
  const server = Bun.serve({ hostname, port, fetch: healthHandler(state) });
  return { port: server.port ?? port, stop: () => server.stop(true) };
}
