// Test helper: a throw-away network namespace with a bridge "underlay" (the dummy module is not always available)
// carrying 192.168.77.1/24, so routes via 192.168.77.x resolve.
import { randomBytes } from "node:crypto";

export interface TestNs {
  name: string;
  /** Runs `ip -n <ns> <args>` and returns stdout; throws on failure. */
  ip(...args: string[]): string;
  bridge(...args: string[]): string;
  /** Removes our nexthops (which takes their routes along) and our other routes: iproute2 6.1's route flush fails on nhid routes. */
  flushOurs(proto: number): void;
  remove(): void;
}

function sh(cmd: string[]): string {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")}: ${r.stderr.toString().trim()}`);
  return r.stdout.toString();
}

export function makeNs(underlay = "ul0", cidr = "192.168.77.1/24"): TestNs {
  const name = `fbt-${randomBytes(4).toString("hex")}`;
  sh(["ip", "netns", "add", name]);
  const ns: TestNs = {
    name,
    ip: (...a) => sh(["ip", "-n", name, ...a]),
    bridge: (...a) => sh(["bridge", "-n", name, ...a]),
    flushOurs: (proto) => {
      sh(["ip", "-n", name, "nexthop", "flush", "proto", String(proto)]);
      sh(["ip", "-n", name, "route", "flush", "proto", String(proto)]);
    },
    remove: () => {
      Bun.spawnSync(["ip", "netns", "del", name]);
    },
  };
  try {
    ns.ip("link", "set", "lo", "up");
    ns.ip("link", "add", underlay, "type", "bridge");
    ns.ip("addr", "add", cidr, "dev", underlay);
    ns.ip("link", "set", underlay, "up");
  } catch (e) {
    ns.remove();
    throw e;
  }
  return ns;
}
