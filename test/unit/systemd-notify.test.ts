import { afterEach, expect, test } from "bun:test";
import { type Notifier, notifierFromEnv, socketAddress } from "../../src/systemd-notify.ts";
import { NotifyListener } from "../helpers/notify-listener.ts";

let listener: NotifyListener | null = null;
let notifier: Notifier | null = null;
afterEach(() => {
  notifier?.close();
  listener?.stop();
  listener = notifier = null;
});

test("socket addresses: a path keeps its bytes, @name becomes a NUL byte, vsock and relative paths are refused", () => {
  const p = socketAddress("/run/systemd/notify");
  expect("path" in p && new TextDecoder().decode(p.path)).toBe("/run/systemd/notify");
  const a = socketAddress("@abc");
  expect("path" in a && [...a.path]).toEqual([0, 97, 98, 99]);
  expect("unusable" in socketAddress("vsock:2:1234")).toBe(true);
  expect("unusable" in socketAddress("run/notify")).toBe(true);
  expect("unusable" in socketAddress(`/${"x".repeat(107)}`)).toBe(true);
});

test("no NOTIFY_SOCKET: every call is a no-op", () => {
  notifier = notifierFromEnv({});
  expect(notifier.enabled).toBe(false);
  notifier.ready("x");
  notifier.status("y");
  notifier.keepExtending();
  notifier.startWatchdog(() => true);
  notifier.stopping();
});

for (const abstract of [false, true]) {
  test(`${abstract ? "abstract @name" : "path"} socket: READY, STATUS, EXTEND, WATCHDOG, STOPPING arrive; the env is cleared`, async () => {
    listener = new NotifyListener(abstract);
    await listener.start();
    const env: Record<string, string | undefined> = { NOTIFY_SOCKET: listener.socket, WATCHDOG_USEC: "200000", OTHER: "1" };
    notifier = notifierFromEnv(env);
    expect(env).toEqual({ OTHER: "1" }); // children must not inherit the socket
    expect(notifier.enabled).toBe(true);
    expect(notifier.watchdogIntervalMs).toBe(100);
    notifier.status("waiting for the store");
    notifier.status("waiting for the store"); // unchanged: not sent again
    notifier.keepExtending(30_000, 50);
    await listener.waitFor((l) => l === "EXTEND_TIMEOUT_USEC=30000000");
    notifier.stopExtending();
    notifier.ready("ready: 2 peers");
    const r = await listener.waitFor((l) => l === "READY=1");
    expect(r.msg).toBe("READY=1\nSTATUS=ready: 2 peers");
    let healthy = true;
    notifier.startWatchdog(() => healthy);
    await Bun.sleep(550);
    const pings = listener.received.filter((d) => d.msg === "WATCHDOG=1");
    expect(pings.length).toBeGreaterThanOrEqual(3);
    healthy = false; // an unhealthy agent stops pinging
    await Bun.sleep(50);
    const before = listener.received.filter((d) => d.msg === "WATCHDOG=1").length;
    await Bun.sleep(400);
    expect(listener.received.filter((d) => d.msg === "WATCHDOG=1").length).toBe(before);
    notifier.stopping("stopping: SIGTERM");
    await listener.waitFor((l) => l === "STOPPING=1");
    expect(listener.lines().filter((l) => l === "STATUS=waiting for the store")).toHaveLength(1);
  });
}

test("WATCHDOG_PID of another process: no watchdog pings", async () => {
  listener = new NotifyListener(false);
  await listener.start();
  notifier = notifierFromEnv({ NOTIFY_SOCKET: listener.socket, WATCHDOG_USEC: "100000", WATCHDOG_PID: "1" });
  expect(notifier.watchdogIntervalMs).toBeNull();
});

test("a socket nobody listens on: notify logs once and never throws", () => {
  notifier = notifierFromEnv({ NOTIFY_SOCKET: "/nonexistent/dir/notify.sock" });
  expect(notifier.enabled).toBe(true);
  for (let i = 0; i < 3; i++) notifier.ready("x");
  notifier.stopping();
});
