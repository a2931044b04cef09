// systemd notification from the compiled agent, received by a real AF_UNIX datagram listener (path and abstract).
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, statSync } from "node:fs";
import { AgentLab, ensureBinary, until } from "./helpers/agents.ts";
import { NotifyListener } from "./helpers/notify-listener.ts";

const HOST_GW = '{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}';

describe("sd_notify from the agent", () => {
  const lab = new AgentLab();
  let listener: NotifyListener | null = null;
  beforeAll(() => {
    ensureBinary();
  });
  afterEach(() => {
    listener?.stop();
    listener = null;
  });
  afterAll(() => lab.cleanup());

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

  test("NOTIFY_SOCKET pointing nowhere: the agent still reaches ready and exits 0", async () => {
    const h = lab.addHost();
    lab.start(h, [], { NOTIFY_SOCKET: "/nonexistent/notify.sock", WATCHDOG_USEC: "200000" });
    expect(await until(() => lab.health(h, "/readyz") === 200, 20_000)).toBe(true);
    expect(await lab.stop(h)).toBe(0);
    expect(lab.log(h).match(/could not notify systemd/g)?.length).toBe(1);
  });
});
