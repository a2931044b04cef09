// Test hosts for agent processes: one network namespace per host with a veth underlay "eth0" and a default route,
// so each agent programs only its own namespace. Everything is removed by cleanup(), also after a failure.
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";

export { BINARY, ensureBinary } from "./binary.ts";
import { ensureBinary } from "./binary.ts";
import { GiveUp, waitFor } from "../../src/lab/netns.ts";

function sh(cmd: string[]): void {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")}: ${r.stderr.toString().trim()}`);
}

export interface AgentHost {
  ns: string;
  ip: string;
  subnetFile: string;
  logFile: string;
  proc: Subprocess | null;
}

export class AgentLab {
  // Made on first use: a describe block skipped by a test filter never runs its afterAll, so it must create nothing.
  private made: string | null = null;
  get dir(): string {
    return (this.made ??= mkdtempSync(join(tmpdir(), "fb-agents-")));
  }
  get db(): string {
    return join(this.dir, "flannel.db");
  }
  readonly hosts: AgentHost[] = [];
  private readonly tag = Math.random().toString(36).slice(2, 7);

  /** Adds a host namespace with eth0 = 192.0.2.<n>/24 (TEST-NET-1) and a default route. */
  addHost(): AgentHost {
    const n = this.hosts.length + 1;
    const ns = `fbt-${this.tag}-${n}`;
    sh(["ip", "netns", "add", ns]);
    const h: AgentHost = {
      ns,
      ip: `192.0.2.${n}`,
      subnetFile: join(this.dir, `h${n}.env`),
      logFile: join(this.dir, `h${n}.log`),
      proc: null,
    };
    this.hosts.push(h);
    sh(["ip", "-n", ns, "link", "set", "lo", "up"]);
    // This kernel has no dummy device type: a veth pair with both ends here gives eth0 a carrier.
    sh(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    sh(["ip", "-n", ns, "link", "set", "eth0p", "up"]);
    sh(["ip", "-n", ns, "addr", "add", `${h.ip}/24`, "dev", "eth0"]);
    sh(["ip", "-n", ns, "link", "set", "eth0", "up"]);
    sh(["ip", "-n", ns, "route", "add", "default", "via", "192.0.2.254", "dev", "eth0"]);
    return h;
  }

  storeFlags(): string[] {
    return ["--store", "sqlite", "--sqlite-path", this.db];
  }

  cli(args: string[]): { code: number; out: string; err: string } {
    // Bounded: a synchronous spawn blocks the event loop, so bun's own per-test timeout could not end a hang.
    const r = Bun.spawnSync([ensureBinary(), ...args], { stdout: "pipe", stderr: "pipe", timeout: 30_000, killSignal: "SIGKILL" });
    return { code: r.exitCode ?? -1, out: r.stdout.toString(), err: r.stderr.toString() };
  }

  putConfig(json: string): void {
    const r = this.cli(["config", "put", json, ...this.storeFlags()]);
    if (r.code !== 0) throw new Error(`config put failed: ${r.err}`);
  }

  /** Starts the agent in h's namespace; `env` is added to this process's environment (e.g. NOTIFY_SOCKET). */
  start(h: AgentHost, extra: string[] = [], env: Record<string, string> = {}): void {
    const argv = [
      "ip",
      "netns",
      "exec",
      h.ns,
      ensureBinary(),
      "run",
      ...this.storeFlags(),
      "--subnet-file",
      h.subnetFile,
      "--healthz-port",
      "8471",
      ...extra,
    ];
    h.proc = Bun.spawn(argv, { stdout: Bun.file(h.logFile), stderr: Bun.file(h.logFile), env: { ...process.env, ...env } });
  }

  /** SIGTERM by PID; resolves with the exit code (SIGKILL after 10 s). */
  async stop(h: AgentHost): Promise<number | null> {
    const p = h.proc;
    if (!p) return null;
    h.proc = null;
    p.kill("SIGTERM");
    const t = setTimeout(() => p.kill("SIGKILL"), 10_000);
    const code = await p.exited;
    clearTimeout(t);
    return code;
  }

  subnetOf(h: AgentHost): string | null {
    if (!existsSync(h.subnetFile)) return null;
    const m = /^FLANNEL_SUBNET=(.*)$/m.exec(readFileSync(h.subnetFile, "utf8"));
    return m ? m[1]! : null;
  }

  log(h: AgentHost): string {
    return existsSync(h.logFile) ? readFileSync(h.logFile, "utf8") : "";
  }

  /** HTTP status of a health path inside the host's namespace (0 if nothing answers). */
  health(h: AgentHost, path: string): number {
    const r = Bun.spawnSync(
      [
        "ip",
        "netns",
        "exec",
        h.ns,
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "2",
        `http://127.0.0.1:8471${path}`,
      ],
      { stdout: "pipe" },
    );
    return Number(r.stdout.toString()) || 0;
  }

  async cleanup(): Promise<void> {
    await Promise.all(this.hosts.map((h) => this.stop(h)));
    for (const h of this.hosts) Bun.spawnSync(["ip", "netns", "del", h.ns]);
    if (this.made) rmSync(this.made, { recursive: true, force: true });
  }
}

/** Polls until check() is truthy or the deadline passes; returns the last value (falsy on timeout, for expect()). */
export async function until<T>(check: () => T | Promise<T>, ms: number, every = 100): Promise<T> {
  let last!: T;
  try {
    return await waitFor(
      "a condition",
      ms,
      async () => {
        last = await check();
        return last ? last : undefined;
      },
      every,
    );
  } catch (e) {
    if (e instanceof GiveUp) throw e;
    return last;
  }
}
