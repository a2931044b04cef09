// The compiled agent as systemd sees it: sd_notify messages received by a real AF_UNIX datagram listener (path and
// abstract), readiness that follows the kernel (an agent without CAP_NET_ADMIN, via capsh), and SIGTERM/SIGINT ending
// the agent in each waiting state. Every agent runs in its own namespace.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { type AgentHost, AgentLab, ensureBinary, until } from "./helpers/agents.ts";
import { NotifyListener } from "./helpers/notify-listener.ts";

const HOST_GW = '{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}';
const VXLAN = '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}';

function curl(h: AgentHost, path: string): { code: number; body: string } {
  const r = Bun.spawnSync(
    ["ip", "netns", "exec", h.ns, "curl", "-s", "--max-time", "2", "-w", "\n%{http_code}", `http://127.0.0.1:8471${path}`],
    {
      stdout: "pipe",
    },
  );
  const out = r.stdout.toString();
  const nl = out.lastIndexOf("\n");
  return { code: Number(out.slice(nl + 1)) || 0, body: out.slice(0, nl) };
}

/** SIGTERM; resolves with [exit code, ms until exit] (SIGKILL after 10 s so a failure cannot hang the suite). */
async function termAndTime(p: Subprocess): Promise<[number | null, number]> {
  const t0 = performance.now();
  p.kill("SIGTERM");
  const k = setTimeout(() => p.kill("SIGKILL"), 10_000);
  const code = await p.exited;
  clearTimeout(k);
  return [code, performance.now() - t0];
}

describe("the agent under systemd", () => {
  const lab = new AgentLab();
  const procs: Subprocess[] = [];
  let listener: NotifyListener | null = null;
  beforeAll(() => {
    ensureBinary();
  });
  afterEach(() => {
    listener?.stop();
    listener = null;
  });
  afterAll(async () => {
    for (const p of procs) p.kill("SIGKILL");
    await Promise.all(procs.map((p) => p.exited));
    await lab.cleanup();
  });

  test("path socket: waits for the config with STATUS and EXTEND_TIMEOUT_USEC, READY=1 only after subnet.env, WATCHDOG at WATCHDOG_USEC/2, STOPPING=1 on SIGTERM", async () => {
    const h = lab.addHost();
    listener = new NotifyListener(false);
    await listener.start();
    lab.start(h, [], { NOTIFY_SOCKET: listener.socket, WATCHDOG_USEC: "400000" });
    await listener.waitFor((l) => l === "STATUS=waiting for network config");
    await listener.waitFor((l) => l.startsWith("EXTEND_TIMEOUT_USEC="));
    await Bun.sleep(500);
    expect(listener.lines()).not.toContain("READY=1");
    expect(listener.lines()).not.toContain("WATCHDOG=1"); // not healthy before ready
    expect(existsSync(h.subnetFile)).toBe(false);
    lab.putConfig(HOST_GW);
    const ready = await listener.waitFor((l) => l === "READY=1");
    expect(existsSync(h.subnetFile)).toBe(true);
    expect(statSync(h.subnetFile).mtimeMs).toBeLessThanOrEqual(ready.t);
    expect(ready.msg).toMatch(/^READY=1\nSTATUS=ready: lease 10\.5\.\d+\.0\/24, 0 peers$/);
    expect(listener.lines().indexOf("STATUS=waiting for lease")).toBeGreaterThan(
      listener.lines().indexOf("STATUS=waiting for network config"),
    );
    // WATCHDOG_USEC=400 ms: a ping every 200 ms while healthy.
    await Bun.sleep(2000);
    const pings = listener.received.filter((d) => d.msg === "WATCHDOG=1").map((d) => d.t);
    expect(pings.length).toBeGreaterThanOrEqual(5);
    expect(pings.length).toBeLessThanOrEqual(15);
    const gaps = pings.slice(1).map((t, i) => t - pings[i]!);
    const mean = gaps.reduce((a, b) => a + b, 0) / gaps.length;
    expect(mean).toBeGreaterThan(150);
    const sent = Date.now();
    expect(await lab.stop(h)).toBe(0);
    const stopping = await listener.waitFor((l) => l === "STOPPING=1");
    expect(stopping.t).toBeGreaterThanOrEqual(sent - 50);
  });

  test("abstract @name socket (in the agent's network namespace): READY=1 and STOPPING=1", async () => {
    const h = lab.addHost();
    listener = new NotifyListener(true, ["ip", "netns", "exec", h.ns]);
    await listener.start();
    lab.start(h, [], { NOTIFY_SOCKET: listener.socket });
    const ready = await listener.waitFor((l) => l === "READY=1");
    expect(statSync(h.subnetFile).mtimeMs).toBeLessThanOrEqual(ready.t);
    expect(await lab.stop(h)).toBe(0);
    await listener.waitFor((l) => l === "STOPPING=1");
    expect(listener.lines()).not.toContain("WATCHDOG=1"); // no WATCHDOG_USEC: no pings
  });

  test("children never inherit NOTIFY_SOCKET or WATCHDOG_USEC (every ip/bridge the agent runs is checked)", async () => {
    const h = lab.addHost();
    lab.putConfig(VXLAN); // vxlan: the device is made through ip -batch too
    listener = new NotifyListener(false);
    await listener.start();
    // Wrappers named ip, bridge, iptables* and nft first in PATH record what each child process sees, then runs the real tool.
    const bin = join(lab.dir, `wrap-${h.ns}`);
    const seen = join(lab.dir, `seen-${h.ns}.txt`);
    mkdirSync(bin, { recursive: true });
    for (const tool of ["ip", "bridge", "iptables", "iptables-save", "iptables-restore", "nft"]) {
      const real = Bun.which(tool, { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" });
      if (!real) continue;
      writeFileSync(
        join(bin, tool),
        `#!/bin/sh\necho "${tool} $1 \${NOTIFY_SOCKET-unset} \${WATCHDOG_USEC-unset}" >> ${seen}\nexec ${real} "$@"\n`,
        {
          mode: 0o755,
        },
      );
    }
    lab.start(h, [], { NOTIFY_SOCKET: listener.socket, WATCHDOG_USEC: "1000000", PATH: `${bin}:${process.env.PATH}` });
    await listener.waitFor((l) => l === "READY=1");
    expect(await lab.stop(h)).toBe(0);
    // The first line is `ip netns exec` that started the agent (it has the variables); every later one is a child.
    const children = readFileSync(seen, "utf8").trim().split("\n").slice(1);
    expect(children.length).toBeGreaterThan(2);
    expect(children.filter((l) => !l.endsWith(" unset unset"))).toEqual([]);
  });

  test("NOTIFY_SOCKET pointing nowhere: the agent still reaches ready and exits 0", async () => {
    const h = lab.addHost();
    lab.start(h, [], { NOTIFY_SOCKET: "/nonexistent/notify.sock", WATCHDOG_USEC: "200000" });
    expect(await until(() => lab.health(h, "/readyz") === 200, 20_000)).toBe(true);
    expect(await lab.stop(h)).toBe(0);
    expect(lab.log(h).match(/could not notify systemd/g)?.length).toBe(1);
  });

  const spawn = (h: AgentHost, prefix: string[], args: string[], env: Record<string, string> = {}) => {
    const p = Bun.spawn(["ip", "netns", "exec", h.ns, ...prefix, ensureBinary(), "run", ...args], {
      stdout: Bun.file(h.logFile),
      stderr: Bun.file(h.logFile),
      env: { ...process.env, ...env },
    });
    procs.push(p);
    return p;
  };

  test("without CAP_NET_ADMIN: the vxlan device cannot be made, so /readyz 503 with the kernel's reason, ready 0, no READY=1, no subnet.env; SIGTERM ends it within 3 s with 0", async () => {
    const h = lab.addHost();
    lab.putConfig(VXLAN);
    listener = new NotifyListener(false);
    await listener.start();
    const storeArgs = [...lab.storeFlags(), "--subnet-file", h.subnetFile];
    // capsh runs the agent through bash -c: `exec` makes the agent the process we signal.
    const bin = ensureBinary();
    const p = Bun.spawn(
      ["ip", "netns", "exec", h.ns, "capsh", "--drop=cap_net_admin", "--", "-c", `exec ${bin} run ${storeArgs.join(" ")}`],
      { stdout: Bun.file(h.logFile), stderr: Bun.file(h.logFile), env: { ...process.env, NOTIFY_SOCKET: listener.socket } },
    );
    procs.push(p);
    await listener.waitFor((l) => l.startsWith("STATUS=not ready: device flannel.1 is missing"));
    const r = await until(() => {
      const x = curl(h, "/readyz");
      return x.body.includes("Operation not permitted") ? x : null;
    }, 15_000);
    expect(r?.code).toBe(503);
    expect(r?.body).toContain("device flannel.1 is missing");
    expect(curl(h, "/metrics").body).toContain("flannel_bin_ready 0");
    const batches = () => Number(/^flannel_bin_kernel_batches_total (\d+)$/m.exec(curl(h, "/metrics").body)?.[1] ?? 0);
    const before = batches();
    await Bun.sleep(4000); // retried with backoff, still not ready
    expect(batches()).toBeGreaterThan(before);
    expect(curl(h, "/readyz").code).toBe(503);
    expect(listener.lines()).not.toContain("READY=1");
    expect(existsSync(h.subnetFile)).toBe(false);
    // One "not ready" line per distinct reason, however often it was retried.
    expect(lab.log(h).match(/not ready: device flannel\.1 is missing/g)?.length).toBe(1);
    expect(lab.log(h).match(/ip link add flannel\.1 .*Operation not permitted \(gave up/g)?.length).toBe(1);
    expect(lab.log(h).match(/device setup: ip link add flannel\.1 /g)?.length).toBe(1);
    const [code, ms] = await termAndTime(p);
    expect(code).toBe(0);
    expect(ms).toBeLessThan(3000);
    await listener.waitFor((l) => l === "STOPPING=1");
  });

  test("SIGTERM while the store is unreachable ends it within 3 s with 0", async () => {
    const h = lab.addHost();
    const p = spawn(h, [], ["--etcd-endpoints", "http://127.0.0.1:9", "--subnet-file", h.subnetFile]);
    expect(await until(() => lab.log(h).includes("etcd unavailable"), 15_000)).toBe(true);
    const [code, ms] = await termAndTime(p);
    expect(code).toBe(0);
    expect(ms).toBeLessThan(3000);
  });

  test("SIGINT while waiting for the network config ends it within 3 s with 0", async () => {
    const h = lab.addHost();
    const p = spawn(h, [], ["--store", "sqlite", "--sqlite-path", `${lab.dir}/empty-${h.ns}.db`, "--subnet-file", h.subnetFile]);
    expect(await until(() => lab.log(h).includes("network config not found"), 15_000)).toBe(true);
    const t0 = performance.now();
    p.kill("SIGINT");
    const k = setTimeout(() => p.kill("SIGKILL"), 10_000);
    expect(await p.exited).toBe(0);
    clearTimeout(k);
    expect(performance.now() - t0).toBeLessThan(3000);
  });
});
