// Shared by the traffic-rules tests against the real kernel: a throw-away network namespace per test, commands in it,
// a captured log, and TrafficRules aimed at the namespace. Each test file registers `afterEach(cleanup)` itself (a
// hook registered here would only apply to the first file that imports this module).
import { randomBytes } from "node:crypto";
import type { ConsolaInstance } from "consola";
import { TrafficRules, type TrafficRulesOptions } from "../../src/rules/traffic-rules.ts";
import { testName } from "../helpers/binary.ts";

export const N = "10.5.0.0/16";
export const P = "10.5.52.0/24";
const made: string[] = [];
const started: TrafficRules[] = [];

export function sh(cmd: string[], stdin?: string): string {
  const r = Bun.spawnSync(cmd, { stdin: stdin === undefined ? "ignore" : new TextEncoder().encode(stdin), stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")}: ${r.stderr.toString().trim()}`);
  return r.stdout.toString();
}
export const inNs = (ns: string, cmd: string[], stdin?: string) => sh(["ip", "netns", "exec", ns, ...cmd], stdin);

export function newNs(): string {
  const ns = testName(`rl-${randomBytes(3).toString("hex")}`);
  sh(["ip", "netns", "add", ns]);
  made.push(ns);
  inNs(ns, ["ip", "link", "set", "lo", "up"]);
  return ns;
}

/** Stops every TrafficRules made by rules() (its watchers die with it), then removes the namespaces; also after a failure. */
export function cleanup(): void {
  for (const tr of started.splice(0)) tr.stop();
  for (const ns of made.splice(0)) Bun.spawnSync(["ip", "netns", "del", ns]);
}

export function capture(): { log: ConsolaInstance; lines: string[] } {
  const lines: string[] = [];
  const put =
    (lvl: string) =>
    (...a: unknown[]) =>
      void lines.push(`${lvl} ${a.map(String).join(" ")}`);
  const log = {
    info: put("info"),
    warn: put("warn"),
    error: put("error"),
    success: put("info"),
    debug: () => {},
  } as unknown as ConsolaInstance;
  return { log, lines };
}

export function rules(ns: string, extra: Partial<TrafficRulesOptions> = {}) {
  const { log, lines } = capture();
  const tr = new TrafficRules({
    network: N,
    subnet: P,
    masq: true,
    forward: true,
    fullyRandomDisable: false,
    nftables: false,
    blackhole: false,
    resyncMs: 200,
    previous: null,
    log,
    netns: ns,
    ...extra,
  });
  started.push(tr);
  return { tr, lines };
}

export const ourLines = (dump: string) => dump.split("\n").filter((l) => l.includes("FLANNEL") || l.includes("flanneld"));

/** Polls cond() every 25 ms until it holds or `ms` passed; returns how long it took, or null. */
export async function within(ms: number, cond: () => boolean): Promise<number | null> {
  const start = Date.now();
  for (let i = 0; i < 10_000; i++) {
    if (cond()) return Date.now() - start;
    if (Date.now() - start > ms) return null;
    await Bun.sleep(25);
  }
  return null;
}
