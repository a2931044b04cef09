// Plumbing shared by the throw-away servers tests start (etcd-server.ts, nats-server.ts): free ports, a child whose
// stderr is drained into a short tail for error messages, a stop that goes from SIGTERM to SIGKILL, and a retry for
// when a port we picked is taken before the server binds it. No bun:test imports here. Processes are only ever
// stopped by the PID that was started here.

import { consola } from "consola";

const log = consola.withTag("server-process");

const STDERR_TAIL_LINES = 40;

/** A port that was free a moment ago on 127.0.0.1 (bind to port 0, read it, close). */
export function freePort(): number {
  const sock = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = sock.port;
  sock.stop(true);
  return port;
}

export type Stdin = "pipe" | "ignore";

/** A started server process and the last lines (at most 40) it wrote to stderr. */
export interface TailedProcess<In extends Stdin> {
  p: Bun.Subprocess<In, "ignore", "pipe">;
  tail: string[];
}

/**
 * Spawns cmd (stdout ignored, stderr piped) and keeps draining its stderr: a full pipe would block the server.
 * Each complete stderr line goes to onLine (if given) and into the returned tail.
 */
export function spawnWithTail<In extends Stdin>(cmd: string[], opts: { stdin: In; onLine?: (line: string) => void }): TailedProcess<In> {
  const p = Bun.spawn(cmd, { stdin: opts.stdin, stdout: "ignore", stderr: "pipe" });
  const tail: string[] = [];
  void (async () => {
    const dec = new TextDecoder();
    let buf = "";
    try {
      for await (const chunk of p.stderr as ReadableStream<Uint8Array>) {
        buf += dec.decode(chunk, { stream: true });
        const lines = buf.split("\n");
        buf = lines.pop() ?? "";
        for (const l of lines) {
          opts.onLine?.(l);
          tail.push(l);
          if (tail.length > STDERR_TAIL_LINES) tail.shift();
        }
      }
    } catch {
      /* process gone */
    }
  })();
  return { p, tail };
}

/** Sends SIGTERM, waits up to graceMs for the exit, then SIGKILLs. Does nothing if p has already exited. */
export async function stopGracefully(p: Bun.Subprocess, name: string, graceMs = 5000): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  p.kill("SIGTERM");
  const done = await Promise.race([p.exited.then(() => true), Bun.sleep(graceMs).then(() => false)]);
  if (!done) {
    log.warn(`${name} pid ${p.pid} ignored SIGTERM for ${graceMs} ms; sending SIGKILL`);
    p.kill("SIGKILL");
    await p.exited;
  }
}

/**
 * Runs launch(). Ports we picked ourselves can be taken by someone else between freePort() and the server's bind:
 * if launch() fails with "address already in use" and newPorts is given, it calls newPorts() and tries again, up to
 * `attempts` tries in all (default 3). Without newPorts (the caller chose the ports) it never retries. Throws
 * launch()'s last error.
 */
export async function retryIfAddressInUse(launch: () => Promise<void>, opts: { newPorts?: () => void; attempts?: number }): Promise<void> {
  const attempts = opts.attempts ?? 3;
  for (let attempt = 1; ; attempt++) {
    try {
      await launch();
      return;
    } catch (e) {
      const inUse = /address already in use/i.test(String((e as Error).message));
      if (!opts.newPorts || !inUse || attempt >= attempts) throw e;
      opts.newPorts();
    }
  }
}
