// The namespace a benchmark runs in: `fbb-<random>` with lo and eth0 = a veth whose peer stays inside
// (192.0.2.1/24, default via 192.0.2.254). The benchmark script re-runs itself inside it (--inner <binary> ...), so
// store servers, agent, writers and `ip monitor` share that namespace's loopback and routing table. The namespace
// and everything still running in it (ours alone) go away at the end, also after a failure or SIGINT.
import { randomBytes } from "node:crypto";

function sh(cmd: string[]): void {
  const r = Bun.spawnSync(cmd, { stdout: "ignore", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")}: ${r.stderr.toString().trim()}`);
}

export async function runInBenchNamespace(script: string, binary: string, args: string[], timeoutMs: number): Promise<number> {
  if (process.getuid?.() !== 0) throw new Error("run as root (creates a network namespace)");
  const ns = `fbb-${randomBytes(3).toString("hex")}`;
  let child: ReturnType<typeof Bun.spawn> | null = null;
  const onSignal = (sig: NodeJS.Signals) => {
    console.error(`\n${sig}: stopping the benchmark and removing ${ns}`);
    child?.kill("SIGTERM");
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    sh(["ip", "netns", "add", ns]);
    sh(["ip", "-n", ns, "link", "set", "lo", "up"]);
    // No dummy devices on this kernel: a veth pair with both ends in the namespace gives eth0 a carrier.
    sh(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    sh(["ip", "-n", ns, "link", "set", "eth0p", "up"]);
    sh(["ip", "-n", ns, "addr", "add", "192.0.2.1/24", "dev", "eth0"]);
    sh(["ip", "-n", ns, "link", "set", "eth0", "up"]);
    sh(["ip", "-n", ns, "route", "add", "default", "via", "192.0.2.254", "dev", "eth0"]);

    child = Bun.spawn(["ip", "netns", "exec", ns, process.execPath, script, "--inner", binary, ...args], {
      stdin: "ignore",
      stdout: "inherit",
      stderr: "inherit",
    });
    const c = child;
    const killer = setTimeout(() => {
      console.error(`benchmark still running after ${timeoutMs / 1000} s: stopping it`);
      c.kill("SIGTERM");
      setTimeout(() => c.kill("SIGKILL"), 10_000).unref();
    }, timeoutMs);
    const code = await c.exited;
    clearTimeout(killer);
    return code ?? 1;
  } finally {
    const pids = Bun.spawnSync(["ip", "netns", "pids", ns], { stdout: "pipe", stderr: "ignore" })
      .stdout.toString()
      .split(/\s+/)
      .filter(Boolean);
    for (const pid of pids) {
      try {
        process.kill(Number(pid), "SIGKILL");
      } catch {
        /* already gone */
      }
    }
    Bun.spawnSync(["ip", "netns", "del", ns], { stdout: "ignore", stderr: "ignore" });
  }
}
