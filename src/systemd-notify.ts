// systemd's readiness protocol (sd_notify(3)): one AF_UNIX datagram of newline-separated KEY=VALUE lines to
// $NOTIFY_SOCKET (a path, or "@name" for an abstract socket). Neither Node nor Bun has unix datagram sockets, so the
// datagram goes out through libc's socket()/sendto() over bun:ffi (works inside the compiled binary; libc.so.6 is
// loaded by soname, never embedded); where that is unavailable (no glibc) the systemd-notify tool sends it.
// No NOTIFY_SOCKET: every call is a no-op. A failure to notify is logged once and never ends the agent.

import { logger } from "./log.ts";

const log = logger("systemd");

/** Sends one datagram; throws on failure. */
type Send = (message: string) => void;

export interface NotifyEnv {
  NOTIFY_SOCKET?: string;
  WATCHDOG_USEC?: string;
  WATCHDOG_PID?: string;
}

/** The notify socket address as bytes for sockaddr_un.sun_path, or a reason it cannot be used. */
export function socketAddress(socket: string): { path: Uint8Array; abstract: boolean } | { unusable: string } {
  if (socket.startsWith("vsock:")) return { unusable: `NOTIFY_SOCKET=${socket}: vsock sockets are not supported` };
  const abstract = socket.startsWith("@");
  if (!abstract && !socket.startsWith("/")) return { unusable: `NOTIFY_SOCKET=${socket}: expected an absolute path or @name` };
  const bytes = new TextEncoder().encode(socket);
  if (abstract) bytes[0] = 0; // "@name" is the abstract name "\0name" (a NUL byte, not the digit 0)
  // sun_path is 108 bytes; a path needs its terminating NUL, an abstract name does not.
  if (bytes.length > (abstract ? 108 : 107)) return { unusable: `NOTIFY_SOCKET=${socket}: longer than a unix socket address allows` };
  return { path: bytes, abstract };
}

/** libc socket(2) + sendto(2) through bun:ffi; null when libc cannot be loaded. */
function libcSender(socket: string): Send | null {
  const addr = socketAddress(socket);
  if ("unusable" in addr) throw new Error(addr.unusable);
  let ffi: typeof import("bun:ffi");
  let lib: ReturnType<typeof openLibc>;
  try {
    ffi = require("bun:ffi") as typeof import("bun:ffi");
    lib = openLibc(ffi);
  } catch {
    return null;
  }
  const AF_UNIX = 1;
  const SOCK_DGRAM = 2;
  const SOCK_CLOEXEC = 0o2000000;
  const MSG_NOSIGNAL = 0x4000;
  // struct sockaddr_un: sa_family_t (u16, host order) then sun_path.
  const sa = new Uint8Array(2 + 108);
  new DataView(sa.buffer).setUint16(0, AF_UNIX, true);
  sa.set(addr.path, 2);
  const saLen = 2 + addr.path.length + (addr.abstract ? 0 : 1);
  let fd = -1;
  const errno = () => ffi.read.i32(lib.symbols.__errno_location() as never, 0);
  return (message) => {
    if (fd < 0) {
      fd = lib.symbols.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      if (fd < 0) throw new Error(`socket(AF_UNIX, SOCK_DGRAM) failed: errno ${errno()}`);
    }
    const buf = new TextEncoder().encode(message);
    const n = Number(lib.symbols.sendto(fd, ffi.ptr(buf), buf.length, MSG_NOSIGNAL, ffi.ptr(sa), saLen));
    if (n !== buf.length) throw new Error(`sendto ${socket} failed: errno ${errno()}`);
  };
}

function openLibc(ffi: typeof import("bun:ffi")) {
  const { FFIType: T } = ffi;
  return ffi.dlopen("libc.so.6", {
    socket: { args: [T.i32, T.i32, T.i32], returns: T.i32 },
    sendto: { args: [T.i32, T.ptr, T.u64, T.i32, T.ptr, T.u32], returns: T.i64 },
    __errno_location: { args: [], returns: T.ptr },
  });
}

/** Fallback: the systemd-notify tool (sends as our PID; short-lived, so not for frequent WATCHDOG=1). */
function toolSender(socket: string): Send {
  return (message) => {
    const r = Bun.spawnSync(["systemd-notify", `--pid=${process.pid}`, ...message.split("\n")], {
      env: { ...process.env, NOTIFY_SOCKET: socket },
      stdout: "ignore",
      stderr: "pipe",
      timeout: 5000,
      killSignal: "SIGKILL",
    });
    if (r.exitCode !== 0) throw new Error(`systemd-notify failed (exit ${r.exitCode}): ${r.stderr.toString().trim()}`);
  };
}

export class Notifier {
  /** Half of WATCHDOG_USEC in ms when systemd expects watchdog pings from this process, else null. */
  readonly watchdogIntervalMs: number | null;
  private lastStatus = "";
  private lastError = "";
  private watchdogTimer: ReturnType<typeof setInterval> | null = null;
  private extendTimer: ReturnType<typeof setInterval> | null = null;

  constructor(
    private readonly send: Send | null,
    watchdogUsec: number | null,
  ) {
    this.watchdogIntervalMs = send && watchdogUsec ? Math.max(1, Math.floor(watchdogUsec / 2000)) : null;
  }

  get enabled(): boolean {
    return this.send !== null;
  }

  /** Sends KEY=VALUE lines in one datagram; never throws. */
  notify(...lines: string[]): void {
    if (!this.send) return;
    try {
      this.send(lines.join("\n"));
      this.lastError = "";
    } catch (e) {
      const msg = (e as Error).message;
      if (msg !== this.lastError) log.warn(`could not notify systemd: ${msg}`);
      this.lastError = msg;
    }
  }

  /** STATUS= (one line) when it changed. */
  status(text: string): void {
    const line = text.replace(/[\r\n]+/g, " ");
    if (line === this.lastStatus) return;
    this.lastStatus = line;
    this.notify(`STATUS=${line}`);
  }

  ready(status: string): void {
    this.lastStatus = status.replace(/[\r\n]+/g, " ");
    this.notify("READY=1", `STATUS=${this.lastStatus}`);
  }

  stopping(status = "stopping"): void {
    this.stopExtending();
    this.stopWatchdog();
    this.lastStatus = status;
    this.notify("STOPPING=1", `STATUS=${status}`);
  }

  /**
   * While a wait of unknown length lasts (store, network config): EXTEND_TIMEOUT_USEC now and every 10 s, so a
   * slow store does not make systemd kill the start; a truly stuck start still ends when the pings stop.
   */
  keepExtending(extendMs = 30_000, everyMs = 10_000): void {
    if (!this.send || this.extendTimer) return;
    const ping = () => this.notify(`EXTEND_TIMEOUT_USEC=${extendMs * 1000}`);
    ping();
    this.extendTimer = setInterval(ping, everyMs);
    this.extendTimer.unref?.();
  }

  stopExtending(): void {
    if (this.extendTimer) clearInterval(this.extendTimer);
    this.extendTimer = null;
  }

  /**
   * WATCHDOG=1 every WATCHDOG_USEC/2, only when healthy() says so: a wedged agent (event loop stuck, watch dead)
   * stops pinging and WatchdogSec= restarts it. The timer firing at all shows the event loop turns.
   */
  startWatchdog(healthy: () => boolean): void {
    if (this.watchdogIntervalMs === null || this.watchdogTimer) return;
    const tick = () => {
      let ok = false;
      try {
        ok = healthy();
      } catch {}
      if (ok) this.notify("WATCHDOG=1");
    };
    tick();
    this.watchdogTimer = setInterval(tick, this.watchdogIntervalMs);
    this.watchdogTimer.unref?.();
  }

  stopWatchdog(): void {
    if (this.watchdogTimer) clearInterval(this.watchdogTimer);
    this.watchdogTimer = null;
  }

  close(): void {
    this.stopExtending();
    this.stopWatchdog();
  }
}

/**
 * Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID once and removes them from `env` (process.env by default), so
 * child processes (ip, bridge, iptables) never inherit them and cannot send stray notifications.
 * Bun.spawn without an `env` option passes the environment the process STARTED with (deletions from process.env
 * are not seen, nor libc unsetenv): every spawn of the agent must pass `env: process.env`.
 */
export function notifierFromEnv(env: NotifyEnv & Record<string, string | undefined> = process.env): Notifier {
  const socket = env.NOTIFY_SOCKET;
  const usec = env.WATCHDOG_USEC;
  const wpid = env.WATCHDOG_PID;
  delete env.NOTIFY_SOCKET;
  delete env.WATCHDOG_USEC;
  delete env.WATCHDOG_PID;
  if (!socket) return new Notifier(null, null);
  let send: Send | null = null;
  try {
    send = libcSender(socket) ?? toolSender(socket);
  } catch (e) {
    log.warn(`systemd notification is off: ${(e as Error).message}`);
    return new Notifier(null, null);
  }
  const watchdogForUs = !wpid || Number(wpid) === process.pid;
  const us = usec && /^\d+$/.test(usec) && Number(usec) > 0 ? Number(usec) : null;
  return new Notifier(send, watchdogForUs ? us : null);
}
