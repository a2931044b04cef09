// A real sd_notify receiver for tests: python3 binds an AF_UNIX SOCK_DGRAM socket (a path, or an abstract "@name")
// and prints every datagram it gets as one JSON line with its arrival time. Stopped by PID.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";

const RECEIVER = `
import json, socket, sys, time
addr = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\\0" + addr[1:] if addr.startswith("@") else addr)
print(json.dumps({"bound": True}), flush=True)
while True:
    data = s.recv(65536)
    print(json.dumps({"t": time.time() * 1000, "msg": data.decode("utf-8", "replace")}), flush=True)
`;

export interface Datagram {
  t: number;
  msg: string;
}

export class NotifyListener {
  readonly socket: string;
  readonly received: Datagram[] = [];
  private proc: Subprocess<"ignore", "pipe", "pipe"> | null = null;
  private dir: string | null = null;

  /**
   * abstract: an "@name" socket; otherwise a path in a fresh temporary folder. Abstract names live in a network
   * namespace: `wrap` (e.g. ["ip", "netns", "exec", ns]) runs the receiver in the agent's namespace.
   */
  constructor(
    abstract: boolean,
    private readonly wrap: string[] = [],
  ) {
    if (abstract) this.socket = `@fb-notify-test-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
    else {
      this.dir = mkdtempSync(join(tmpdir(), "fb-notify-"));
      this.socket = join(this.dir, "notify.sock");
    }
  }

  async start(): Promise<void> {
    this.proc = Bun.spawn([...this.wrap, "python3", "-u", "-c", RECEIVER, this.socket], {
      stdout: "pipe",
      stderr: "pipe",
      stdin: "ignore",
    });
    const reader = this.proc.stdout.getReader();
    let bound!: () => void;
    const isBound = new Promise<void>((r) => {
      bound = r;
    });
    void (async () => {
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += new TextDecoder().decode(value);
        let nl = buf.indexOf("\n");
        while (nl >= 0) {
          const line = JSON.parse(buf.slice(0, nl)) as Datagram & { bound?: boolean };
          buf = buf.slice(nl + 1);
          if (line.bound) bound();
          else this.received.push(line);
          nl = buf.indexOf("\n");
        }
      }
    })();
    const timeout = new Promise<never>((_, rej) => setTimeout(() => rej(new Error("notify listener did not bind in 10 s")), 10_000));
    await Promise.race([isBound, timeout]);
  }

  /** Every KEY=VALUE line received so far, in order. */
  lines(): string[] {
    return this.received.flatMap((d) => d.msg.split("\n"));
  }

  /** Waits (bounded) until a received line satisfies `pred`; returns the datagram. */
  async waitFor(pred: (line: string) => boolean, timeoutMs = 30_000): Promise<Datagram> {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      const d = this.received.find((x) => x.msg.split("\n").some(pred));
      if (d) return d;
      await Bun.sleep(20);
    }
    throw new Error(`no notify line matched within ${timeoutMs} ms; got: ${JSON.stringify(this.lines())}`);
  }

  stop(): void {
    this.proc?.kill("SIGKILL");
    this.proc = null;
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}
