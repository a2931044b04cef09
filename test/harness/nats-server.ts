// Starts a throw-away single nats-server (/usr/sbin/nats-server) with JetStream, for tests and for the lab.
// No bun:test imports here: the lab (production code) uses it too. Processes are only ever stopped by the PID
// this module started. Everything (listen address, JetStream dir, auth) goes in a small config file, so no
// password or token shows up in `ps`.

import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { consola } from "consola";

const log = consola.withTag("nats-server");

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
  /** Require this token. */
  token?: string;
  /** How long to wait for "Server is ready" (default 15 s). */
  startTimeoutMs?: number;
  /** Path of the nats-server binary (default /usr/sbin/nats-server). */
  natsServerPath?: string;
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
const STDERR_TAIL_LINES = 40;

/** A port that was free a moment ago on 127.0.0.1 (bind to port 0, read it, close). */
function freePort(): number {
  const sock = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = sock.port;
  sock.stop(true);
  return port;
}

/** A NATS config string literal (the format accepts JSON-style double-quoted strings). */
function q(s: string): string {
  return JSON.stringify(s);
}

export async function startNatsServer(opts: NatsServerOptions = {}): Promise<NatsServer> {
  const host = opts.host ?? "127.0.0.1";
  if ((opts.user === undefined) !== (opts.password === undefined)) {
    throw new Error("startNatsServer: user and password must be given together");
  }
  if (opts.token !== undefined && opts.user !== undefined) {
    throw new Error("startNatsServer: give either user/password or token, not both");
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
  let proc: { p: Bun.Subprocess<"ignore", "ignore", "pipe">; tail: string[]; ready: Promise<void> } | null = null;

  async function writeConfig(): Promise<void> {
    const lines = [
      `listen: ${q(`${urlHost}:${port}`)}`,
      `jetstream { store_dir: ${q(storeDir)} }`,
    ];
    if (opts.user !== undefined && opts.password !== undefined) {
      lines.push(`authorization { user: ${q(opts.user)}, password: ${q(opts.password)} }`);
    } else if (opts.token !== undefined) {
      lines.push(`authorization { token: ${q(opts.token)} }`);
    }
    await writeFile(confPath, lines.join("\n") + "\n", { mode: 0o600 });
  }

  function spawnServer() {
    const args = [binary, "-c", confPath];
    const cmd = opts.netns ? ["ip", "netns", "exec", opts.netns, ...args] : args;
    const p = Bun.spawn(cmd, { stdin: "ignore", stdout: "ignore", stderr: "pipe" });
    // Keep draining stderr (a full pipe would block the server), remember its tail, and notice "Server is ready":
    // that line works the same inside a netns, where we could not probe the port from here.
    const tail: string[] = [];
    let markReady: () => void = () => {};
    const ready = new Promise<void>((resolve) => (markReady = resolve));
    void (async () => {
      const dec = new TextDecoder();
      let buf = "";
      try {
        for await (const chunk of p.stderr as ReadableStream<Uint8Array>) {
          buf += dec.decode(chunk, { stream: true });
          const lines = buf.split("\n");
          buf = lines.pop() ?? "";
          for (const l of lines) {
            if (l.includes("Server is ready")) markReady();
            tail.push(l);
            if (tail.length > STDERR_TAIL_LINES) tail.shift();
          }
        }
      } catch {
        /* process gone */
      }
    })();
    return { p, tail, ready };
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
    if (!cur || cur.p.exitCode !== null || cur.p.signalCode !== null) return;
    cur.p.kill("SIGTERM");
    const done = await Promise.race([cur.p.exited.then(() => true), Bun.sleep(STOP_GRACE_MS).then(() => false)]);
    if (!done) {
      log.warn(`nats-server pid ${cur.p.pid} ignored SIGTERM for ${STOP_GRACE_MS} ms; sending SIGKILL`);
      cur.p.kill("SIGKILL");
      await cur.p.exited;
    }
  }

  async function removeDirs(): Promise<void> {
    await rm(confDir, { recursive: true, force: true });
    if (ownStoreDir) await rm(storeDir, { recursive: true, force: true });
  }

  // A port we picked ourselves can be taken by someone else between the check and the bind: retry with a new one.
  for (let attempt = 1; ; attempt++) {
    try {
      await launch();
      break;
    } catch (e) {
      const inUse = /address already in use/i.test(String((e as Error).message));
      if (opts.port === undefined && inUse && attempt < 3) {
        port = freePort();
        continue;
      }
      await removeDirs();
      throw e;
    }
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
