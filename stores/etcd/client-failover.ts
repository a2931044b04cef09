// The etcd gateway client: endpoints, TLS, auth tokens, and the one failover loop every request goes through.
// Each request starts at the last endpoint that answered (sticky) and moves on to the next on a connection error, a
// timeout or an "unavailable" answer; when every endpoint failed it throws StoreUnavailableError naming each.

import { logger } from "../../src/log.ts";
import { StoreUnavailableError } from "../../src/store.ts";
import { storeHealth } from "../../src/store-health.ts";
import { diagnoseTlsFailure } from "./tls-diagnosis.ts";
import { EtcdError, errorMessage, gatewayError, isAuthTokenError, type Json, readJson } from "./gateway.ts";

const log = logger("etcd");

export interface EtcdTls {
  ca?: string;
  cert?: string;
  key?: string;
}

/** One endpoint's outcome: a result, or the reason to try the next endpoint. */
type Attempt<T> = { ok: T } | { next: string };

/** An open streaming response (a watch) and how to close it. */
export interface EtcdStream {
  res: Response;
  endpoint: string;
  close(): void;
}

export class EtcdClient {
  private current = 0;
  private token: { endpoint: string; token: string } | null = null;
  private readonly closeCtl = new AbortController();
  /** Endpoints whose last attempt failed: their failure and their recovery are each logged once. */
  private readonly down = new Set<string>();

  constructor(
    readonly endpoints: string[],
    private readonly tls: EtcdTls | undefined,
    private readonly auth: { username: string; password: string } | undefined,
    readonly requestTimeoutMs: number,
  ) {}

  get closed(): AbortSignal {
    return this.closeCtl.signal;
  }

  close(): void {
    this.closeCtl.abort();
  }

  checkOpen(): void {
    if (this.closeCtl.signal.aborted) throw new Error("etcd store is closed");
  }

  /** Forget the auth token (the server said it is invalid): the next request authenticates again. */
  dropToken(): void {
    this.token = null;
  }

  /**
   * The failover loop: `attempt` on each endpoint in turn from the last good one. An EtcdError (a real answer) ends
   * it at once; anything else thrown, or { next }, moves on to the next endpoint.
   */
  private async failover<T>(what: string, attempt: (endpoint: string) => Promise<Attempt<T>>, signal?: AbortSignal): Promise<T> {
    this.checkOpen();
    const failures: string[] = [];
    const n = this.endpoints.length;
    const start = this.current;
    for (let k = 0; k < n; k++) {
      const i = (start + k) % n;
      const ep = this.endpoints[i]!;
      let r: Attempt<T>;
      try {
        r = await attempt(ep);
      } catch (e) {
        if (this.closeCtl.signal.aborted) throw new Error("etcd store is closed");
        if (e instanceof EtcdError || signal?.aborted) throw e;
        const why =
          (e as Error).name === "TimeoutError"
            ? `no answer within ${this.requestTimeoutMs} ms`
            : ((await diagnoseTlsFailure(ep, e, this.tls)) ?? errorMessage(e));
        failures.push(`${ep} (${why})`);
        this.markDown(ep, why);
        continue;
      }
      if ("ok" in r) {
        this.current = i;
        if (this.down.delete(ep)) log.info(`etcd endpoint ${ep} answers again`);
        return r.ok;
      }
      failures.push(`${ep} (${r.next})`);
      this.markDown(ep, r.next);
    }
    throw new StoreUnavailableError(`etcd ${what}unavailable at every endpoint: ${failures.join(", ")}`);
  }

  private markDown(ep: string, why: string): void {
    if (this.down.has(ep)) return;
    this.down.add(ep);
    log.warn(`etcd endpoint ${ep} failed (${why}); using the next endpoint`);
  }

  /**
   * The watch on `endpoint` broke or went stale: the next request starts at the endpoint after it, so a member
   * that keeps its connections open but does not serve (stopped, partitioned, without a leader) is left behind.
   */
  avoid(endpoint: string): void {
    const i = this.endpoints.indexOf(endpoint);
    if (i >= 0 && i === this.current && this.endpoints.length > 1) this.current = (i + 1) % this.endpoints.length;
    storeHealth.error();
  }

  /** A unary gateway call (POST JSON, JSON answer), bounded by requestTimeoutMs per endpoint. */
  call(path: string, body: unknown): Promise<Json> {
    return this.failover<Json>("", async (ep) => {
      for (let authTry = 0; ; authTry++) {
        const signal = AbortSignal.any([this.closeCtl.signal, AbortSignal.timeout(this.requestTimeoutMs)]);
        const headers = await this.authHeaders(ep, signal);
        const res = await fetch(ep + path, this.fetchInit(body, headers, signal));
        const j = await readJson(res);
        if (res.ok) return { ok: j };
        const msg = gatewayError(j, res.status);
        if (this.auth && isAuthTokenError(msg) && authTry === 0) {
          this.token = null; // expired or from another member: authenticate again and retry once
          continue;
        }
        if (res.status === 503 || j.code === 14) return { next: msg };
        throw new EtcdError(`etcd ${ep}${path}: ${msg}`, typeof j.code === "number" ? j.code : undefined);
      }
    });
  }

  /**
   * Opens a streaming call (/v3/watch) on the first endpoint that answers. Only the connect is bounded (until the
   * headers arrive): one controller per attempt, so a black-holed endpoint is left for the next one. The stream
   * stays open until close() or `signal` aborts.
   */
  openStream(path: string, body: unknown, signal: AbortSignal): Promise<EtcdStream> {
    return this.failover<EtcdStream>(
      "watch ",
      async (ep) => {
        const ctl = new AbortController();
        const onAbort = () => ctl.abort();
        signal.addEventListener("abort", onAbort, { once: true });
        const close = () => {
          signal.removeEventListener("abort", onAbort);
          ctl.abort();
        };
        const timer = setTimeout(() => ctl.abort(new DOMException("connect timeout", "TimeoutError")), this.requestTimeoutMs);
        try {
          const headers = await this.authHeaders(ep, ctl.signal);
          const res = await fetch(ep + path, this.fetchInit(body, headers, ctl.signal));
          if (!res.ok) {
            const j = await readJson(res).catch(() => ({}) as Json);
            const msg = gatewayError(j, res.status);
            if (isAuthTokenError(msg)) this.token = null;
            close();
            return { next: msg };
          }
          return { ok: { res, endpoint: ep, close } };
        } catch (e) {
          close();
          throw e;
        } finally {
          clearTimeout(timer);
        }
      },
      signal,
    );
  }

  private fetchInit(body: unknown, headers: Record<string, string>, signal: AbortSignal): RequestInit {
    const init: RequestInit & { tls?: unknown } = {
      method: "POST",
      // hasleader: a member without a leader refuses (and ends watches) instead of serving stale data or hanging;
      // what etcd's WithRequireLeader sends as gRPC metadata, through the gateway's Grpc-Metadata- mapping.
      headers: { "content-type": "application/json", "grpc-metadata-hasleader": "true", ...headers },
      body: JSON.stringify(body),
      signal,
    };
    if (this.tls) init.tls = this.tls;
    return init;
  }

  /** Authorization header for `endpoint` (simple tokens are per member, so a new endpoint authenticates anew). */
  private async authHeaders(endpoint: string, signal: AbortSignal): Promise<Record<string, string>> {
    if (!this.auth) return {};
    if (this.token?.endpoint === endpoint) return { authorization: this.token.token };
    const res = await fetch(
      `${endpoint}/v3/auth/authenticate`,
      this.fetchInit({ name: this.auth.username, password: this.auth.password }, {}, signal),
    );
    const j = await readJson(res);
    if (!res.ok)
      throw new EtcdError(`etcd authentication as ${this.auth.username} at ${endpoint} failed: ${gatewayError(j, res.status)}`, res.status);
    if (typeof j.token !== "string" || j.token === "") throw new EtcdError(`etcd at ${endpoint} returned no auth token`);
    this.token = { endpoint, token: j.token };
    log.debug(`authenticated as ${this.auth.username} at ${endpoint}`);
    return { authorization: j.token };
  }
}
