// Starts a throw-away single nats-server (/usr/sbin/nats-server) with JetStream, for tests and benchmarks (the lab
// starts its own, detached: src/lab/servers.ts). No bun:test imports here. Processes are only ever stopped by the PID
// this module started. Everything (listen address, JetStream dir, auth) goes in a small config file, so no
// password or token shows up in `ps`.

import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type TailedProcess, freePort, retryIfAddressInUse, spawnWithTail, stopGracefully } from "./server-process.ts";

export interface NatsServerOptions {
  /** Address to listen on (default 127.0.0.1). Inside a netns, an address of that namespace. */
  host?: string;
  /** Client port (default: a free port). */
  port?: number;
  /** JetStream store dir (default: a fresh temp dir, removed by stop()). A given dir is kept by stop(). */
  storeDir?: string;
  /** Run inside `ip netns exec <ns>`. */
  netns?: string;
  /** Require this user/password (both or neither). */
  user?: string;
  password?: string;
  /** With user/password: subjects that user may not publish to (a request to them is never answered). */
  denyPublish?: string[];
  /** Require this token. */
  token?: string;
  /** How long to wait for "Server is ready" (default 15 s). */
  startTimeoutMs?: number;
  /** Path of the nats-server binary (default /usr/sbin/nats-server). */
  natsServerPath?: string;
  /**
   * Require TLS with these PEM files. caFile is the CA that client certificates are checked against; verify: true
   * makes the server demand a client certificate signed by it. The url stays nats://: a 2.9 server sends its INFO
   * in clear and the client upgrades because the server says tls_required.
   */
  tls?: { certFile: string; keyFile: string; caFile?: string; verify?: boolean };
}

export interface NatsServer {
  /** nats://host:port */
  url: string;
  /** PID of the running nats-server (changes after restart()). */
  readonly pid: number;
  storeDir: string;
  /** Stops the process (SIGTERM, then SIGKILL) and removes the dirs this module created. */
  stop(): Promise<void>;
  /** Stops the process and starts it again on the same port and store dir. */
  restart(): Promise<void>;
}

const STOP_GRACE_MS = 5000;

/** A NATS config string literal (the format accepts JSON-style double-quoted strings). */
function q(s: string): string {
  return JSON.stringify(s);
}

export async function startNatsServer(opts: NatsServerOptions = {}): Promise<NatsServer> {
  const host = opts.host ?? "127.0.0.1";
  if ((opts.user === undefined) !== (opts.password === undefined)) {
    throw new Error("startNatsServer: user and password must be given together");
  }
  if (opts.denyPublish?.length && opts.user === undefined) throw new Error("startNatsServer: denyPublish needs user/password");
  if (opts.token !== undefined && opts.user !== undefined) {
    throw new Error("startNatsServer: give either user/password or token, not both");
  }
  if (opts.tls?.verify && opts.tls.caFile === undefined) {
    throw new Error("startNatsServer: tls.verify needs tls.caFile to check client certificates against");
  }
  const ownStoreDir = opts.storeDir === undefined;
  const storeDir = opts.storeDir ?? (await mkdtemp(join(tmpdir(), "flannel-nats-")));
  // The config lives apart from the store dir so that a caller-owned store dir is never written to by us.
  const confDir = await mkdtemp(join(tmpdir(), "flannel-nats-conf-"));
  const confPath = join(confDir, "nats.conf");
  const startTimeoutMs = opts.startTimeoutMs ?? 15000;
  const binary = opts.natsServerPath ?? "/usr/sbin/nats-server";
  const urlHost = host.includes(":") ? `[${host}]` : host;

  let port = opts.port ?? freePort();
  let proc: (TailedProcess<"ignore"> & { ready: Promise<void> }) | null = null;

  async function writeConfig(): Promise<void> {
    const lines = [`listen: ${q(`${urlHost}:${port}`)}`, `jetstream { store_dir: ${q(storeDir)} }`];
    if (opts.user !== undefined && opts.password !== undefined && opts.denyPublish?.length) {
      const deny = opts.denyPublish.map(q).join(", ");
      lines.push(
        `authorization { users: [ { user: ${q(opts.user)}, password: ${q(opts.password)}, permissions: { publish: { deny: [${deny}] } } } ] }`,
      );
    } else if (opts.user !== undefined && opts.password !== undefined) {
      lines.push(`authorization { user: ${q(opts.user)}, password: ${q(opts.password)} }`);
    } else if (opts.token !== undefined) {
      lines.push(`authorization { token: ${q(opts.token)} }`);
    }
    if (opts.tls) {
      const t = opts.tls;
      // timeout: the handshake limit in seconds; the default 0.5 s is tight on a busy test machine.
      const fields = [`cert_file: ${q(t.certFile)}`, `key_file: ${q(t.keyFile)}`, "timeout: 5"];
      if (t.caFile !== undefined) fields.push(`ca_file: ${q(t.caFile)}`);
      if (t.verify !== undefined) fields.push(`verify: ${t.verify}`);
      lines.push(`tls { ${fields.join(", ")} }`);
    }
    await writeFile(confPath, `${lines.join("\n")}\n`, { mode: 0o600 });
  }

  function spawnServer() {
    const args = [binary, "-c", confPath];
    const cmd = opts.netns ? ["ip", "netns", "exec", opts.netns, ...args] : args;
    // Notice "Server is ready" on stderr: that line works the same inside a netns, where we could not probe the
    // port from here.
    let markReady: () => void = () => {};
    const ready = new Promise<void>((resolve) => (markReady = resolve));
    const onLine = (l: string) => {
      if (l.includes("Server is ready")) markReady();
    };
    return { ...spawnWithTail(cmd, { stdin: "ignore", onLine }), ready };
  }

  async function launch(): Promise<void> {
    await writeConfig();
    const started = spawnServer();
    proc = started;
    const url = `nats://${urlHost}:${port}`;
    const outcome = await Promise.race([
      started.ready.then(() => "ready" as const),
      started.p.exited.then(() => "exited" as const),
      Bun.sleep(startTimeoutMs).then(() => "timeout" as const),
    ]);
    if (outcome === "ready") return;
    if (outcome === "exited") {
      proc = null;
      throw new Error(`nats-server exited with code ${started.p.exitCode} before listening on ${url}:\n${started.tail.join("\n")}`);
    }
    await kill();
    throw new Error(`nats-server was not ready on ${url} within ${startTimeoutMs} ms:\n${started.tail.join("\n")}`);
  }

  async function kill(): Promise<void> {
    const cur = proc;
    proc = null;
    if (cur) await stopGracefully(cur.p, "nats-server", STOP_GRACE_MS);
  }

  async function removeDirs(): Promise<void> {
    await rm(confDir, { recursive: true, force: true });
    if (ownStoreDir) await rm(storeDir, { recursive: true, force: true });
  }

  const newPort = () => {
    port = freePort();
  };
  try {
    await retryIfAddressInUse(launch, { newPorts: opts.port === undefined ? newPort : undefined });
  } catch (e) {
    await removeDirs();
    throw e;
  }

  return {
    url: `nats://${urlHost}:${port}`,
    get pid() {
      return proc?.p.pid ?? -1;
    },
    storeDir,
    async stop() {
      await kill();
      await removeDirs();
    },
    async restart() {
      await kill();
      await launch();
    },
  };
}
