// The NATS client's transport on Bun's own TCP sockets instead of node:net: the Node socket and stream layer Bun
// emulates cost ~30 % of an agent's main thread in a NATS join storm (CPU profile, issue 13), for bytes the client
// only passes through. Plain TCP only: when TLS is wanted (TLS options given, or a server that requires or offers it,
// seen in its INFO before anything is sent) the connection is handed to nats.js's own Node transport, which redials
// and does the TLS exactly as before.
import {
  type ConnectionOptions,
  DataBuffer,
  type Deferred,
  deferred,
  extractProtocolMessage,
  INFO,
  NatsConnectionImpl,
  type NatsConnection,
  type Server,
  type ServerInfo,
  setTransportFactory,
  type Transport,
  checkOptions,
  errors,
} from "@nats-io/nats-core/internal";
// Only the version constant statically: nats.js's Node transport (node:net, node:tls, node:dns: ~5 ms of CPU to load,
// twice that for each of 50 agents started at once) is imported when a connection wants TLS or a server name needs
// DNS, and a plain-TCP agent on server addresses never loads it.
import { version } from "@nats-io/transport-node/lib/version";

const nodeTransport = () => import("@nats-io/transport-node/lib/node_transport");

type Sock = Bun.Socket<undefined>;

/** Whether the Node transport would start TLS for this server (its rule: required, or offered and not refused). */
function wantsTls(info: ServerInfo, opts: ConnectionOptions): boolean {
  return info.tls_required === true || (info.tls_available === true && opts.tls !== null);
}

export class BunTransport implements Transport {
  readonly lang = "nats.js";
  readonly version = version;
  private ownCloseError: Error | undefined;
  private sock: Sock | null = null;
  private yields: Uint8Array[] = [];
  private signal: Deferred<void> = deferred<void>();
  private readonly closedNotification: Deferred<Error | undefined> = deferred<Error | undefined>();
  private done = false;
  private connected = false;
  /** Bytes the socket did not take yet (written on drain, in order). */
  private out: Uint8Array[] = [];
  /** Set while connecting: called with each frame until the server's INFO is complete. */
  private peek: (() => void) | null = null;
  private connError: Error | undefined;
  private sockClosed = false;
  private onClose: ((err?: Error) => void) | null = null;
  /** nats.js's Node transport, when this connection wants TLS: everything is forwarded to it. */
  private tls: Transport | null = null;

  get isClosed(): boolean {
    return this.tls ? this.tls.isClosed : this.done;
  }

  get closeError(): Error | undefined {
    return this.tls ? this.tls.closeError : this.ownCloseError;
  }

  async connect(hp: Server, opts: ConnectionOptions): Promise<void> {
    if (opts.tls && typeof opts.tls === "object") return this.handToTls(hp, opts); // TLS configured: no plain dial
    try {
      this.sock = await this.dial(hp);
      if (this.done) throw new Error("connection closed while connecting");
      const info = await this.peekInfo();
      checkOptions(info, opts);
      if (wantsTls(info, opts)) {
        this.sock.terminate();
        this.sock = null;
        this.yields = [];
        return this.handToTls(hp, opts);
      }
      this.connected = true;
      this.onClose = (err) => void this.closed_(err, false);
    } catch (e) {
      this.sock?.terminate();
      this.sock = null;
      if (!e) throw new errors.ConnectionError("error connecting");
      if ((e as { code?: string }).code === "ECONNREFUSED") throw new errors.ConnectionError("connection refused", { cause: e });
      throw e;
    }
  }

  private async handToTls(hp: Server, opts: ConnectionOptions): Promise<void> {
    const { NodeTransport } = await nodeTransport();
    if (this.done) throw new errors.ConnectionError("connection closed while connecting");
    const t = new NodeTransport();
    this.tls = t;
    await t.connect(hp, opts);
  }

  private dial(hp: Server): Promise<Sock> {
    return Bun.connect({
      hostname: hp.hostname,
      port: hp.port,
      socket: {
        binaryType: "uint8array",
        data: (_s, frame: Uint8Array) => {
          this.yields.push(frame);
          if (this.peek) this.peek();
          else this.signal.resolve();
        },
        drain: () => this.flushOut(),
        error: (_s, err) => {
          this.connError = err;
        },
        // The server shut its side: finish ours (what it sent is already in `yields`).
        end: (s) => void s.end(),
        close: (_s, err) => {
          this.sockClosed = true;
          const e = err ?? this.connError;
          if (this.onClose) this.onClose(e);
          else if (this.peek) this.peek();
        },
        connectError: () => {},
      },
    }).then((s) => {
      s.setNoDelay?.(true);
      return s;
    });
  }

  /** The server's INFO (left in `yields`: the protocol parser reads it from the iterator, as from Node's). */
  private peekInfo(): Promise<ServerInfo> {
    const d = deferred<ServerInfo>();
    const check = () => {
      if (this.sockClosed || this.done) {
        d.reject(this.connError ?? new Error("connection closed before the server's INFO"));
        return;
      }
      const pm = extractProtocolMessage(DataBuffer.concat(...this.yields));
      if (pm === "") return;
      this.peek = null;
      try {
        const m = INFO.exec(pm);
        if (!m) throw new Error("unexpected response from server");
        d.resolve(JSON.parse(m[1]!) as ServerInfo);
      } catch (e) {
        d.reject(e);
      }
    };
    this.peek = check; // each frame, and a close while peeking
    if (this.yields.length) check();
    return d;
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<Uint8Array> {
    return this.tls ? this.tls[Symbol.asyncIterator]() : this.iterate();
  }

  private async *iterate(): AsyncIterableIterator<Uint8Array> {
    while (true) {
      if (this.yields.length === 0) await this.signal;
      const yields = this.yields;
      this.yields = [];
      for (let i = 0; i < yields.length; i++) yield yields[i]!;
      if (this.done) break;
      if (this.yields.length === 0) this.signal = deferred<void>();
    }
  }

  isEncrypted(): boolean {
    return this.tls ? this.tls.isEncrypted() : false;
  }

  send(frame: Uint8Array): void {
    if (this.tls) {
      this.tls.send(frame);
      return;
    }
    if (this.done || this.sock === null) return;
    if (this.out.length) {
      this.out.push(frame);
      return;
    }
    this.writeSome(frame);
  }

  /** Writes what the socket takes now; the rest waits for drain. Write errors are not reported (as Node's): the
   * client notices a dead connection by its reads and its ping timer. */
  private writeSome(frame: Uint8Array): boolean {
    const n = this.sock!.write(frame);
    if (n >= frame.length) return true;
    if (n < 0) return false;
    this.out.unshift(n === 0 ? frame : frame.subarray(n));
    return false;
  }

  private flushOut(): void {
    if (this.sock === null) return;
    while (this.out.length) {
      const f = this.out.shift()!;
      if (!this.writeSome(f)) return;
    }
  }

  close(err?: Error): Promise<void> {
    if (this.tls) return this.tls.close(err);
    return this.closed_(err, false);
  }

  disconnect(): void {
    if (this.tls) {
      this.tls.disconnect();
      return;
    }
    void this.closed_(undefined, true);
  }

  closed(): Promise<Error | undefined> {
    return this.tls ? (this.tls.closed() as Promise<Error | undefined>) : this.closedNotification;
  }

  discard(): void {
    if (this.tls) {
      this.tls.discard();
      return;
    }
    this.done = true;
    this.sock?.terminate();
    this.sock = null;
  }

  private async closed_(err: Error | undefined, internal: boolean): Promise<void> {
    if (!this.connected) return; // a connection that never came up is not reported closed (as Node's)
    if (this.done) {
      this.sock?.terminate();
      return;
    }
    this.ownCloseError = err;
    this.done = true;
    this.onClose = null;
    const s = this.sock;
    this.sock = null;
    if (s) {
      // An orderly close first writes what is still pending; otherwise the socket is dropped.
      if (!err && internal) {
        for (const f of this.out) s.write(f);
        s.end();
      } else s.terminate();
    }
    this.out = [];
    this.closedNotification.resolve(err);
  }
}

/** nats.js's connect() with this transport (and the Node one's DNS resolution). */
export function connectNats(opts: ConnectionOptions): Promise<NatsConnection> {
  // Set at each call, as transport-node's connect() does: another caller in this process may have set its own.
  setTransportFactory({
    factory: () => new BunTransport(),
    dnsResolveFn: async (host: string) => (await nodeTransport()).nodeResolveHost(host),
  });
  return NatsConnectionImpl.connect(opts);
}
