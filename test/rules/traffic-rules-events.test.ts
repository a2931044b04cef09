// Event-driven keeping of the traffic rules against the real kernel, in a throw-away namespace per test: with
// --iptables-resync (and the safety net) at 300 s, polling cannot be what repairs anything, so each removal coming
// back within seconds shows `nft monitor rules` (or `ip monitor route`) at work. Also: an idle step starts no process,
// churn in other chains costs no check, a killed monitor is restarted, stop() kills it, and iptables-legacy polls.
import { afterEach, describe, expect, test } from "bun:test";
import { GRACE_MS } from "../../src/rules/check-policy.ts";
import type { TrafficRules } from "../../src/rules/traffic-rules.ts";
import { cleanup, inNs, newNs, ourLines, rules, within } from "./helpers.ts";

afterEach(cleanup);

const T = 60_000;
const LONG = { resyncMs: 300_000, safetyNetMs: 300_000 };
// The target is well within a second (the latencies are printed); the bound is looser because other sessions load
// the machine's 2 cores, and still 60 times shorter than the 300 s poll period and safety net.
const BACK_MS = 5000;

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/**
 * Installs, starts keeping, and waits until the watchers have subscribed and what follows is done: on a fresh
 * namespace the install's read-back came after the subscription (no check follows), else one check after it.
 */
async function keeping(tr: TrafficRules, lines: string[], watchers = 1): Promise<{ stop: () => Promise<void> }> {
  expect(await tr.install()).toBe(true);
  const ac = new AbortController();
  const loop = tr.run(ac.signal);
  expect(await within(15_000, () => lines.some((l) => l.includes("watching for changes")))).not.toBeNull();
  expect(tr.watcherPids()).toHaveLength(watchers);
  // Quiet for 500 ms: the events of that check's own writes (if any) handled too.
  let last = -1;
  let since = Date.now();
  await within(15_000, () => {
    const n = tr.stats.processesSpawned;
    if (n !== last) [last, since] = [n, Date.now()];
    return Date.now() - since >= 500;
  });
  return {
    stop: async () => {
      ac.abort();
      await loop;
    },
  };
}

const iptCount = (ns: string) => ourLines(inNs(ns, ["iptables-nft-save"])).length;

describe("iptables-nft: repaired on the change event", () => {
  test(
    "a masquerade rule, a forward rule, the jump, a flushed chain, iptables -F, nft flush ruleset: each back at once",
    async () => {
      const ns = newNs();
      const { tr, lines } = rules(ns, LONG);
      const k = await keeping(tr, lines);
      expect(lines.some((l) => l.includes("watching for changes (`nft monitor rules`)"))).toBe(true);
      expect(iptCount(ns)).toBe(12);
      // The start: the flavour detection's two dumps, `iptables --version`, `nft list tables` (leftovers), one
      // restore for both tables, the monitor, and one read-back once it has subscribed (no read before it as well).
      expect(tr.stats.processesSpawned).toBe(7);
      const cases: [string, string[]][] = [
        ["masquerade rule", ["iptables-nft", "-t", "nat", "-D", "FLANNEL-POSTRTG", "5"]],
        ["forward rule", ["iptables-nft", "-D", "FLANNEL-FWD", "1"]],
        ["jump", ["iptables-nft", "-D", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD"]],
        ["flushed chain", ["iptables-nft", "-t", "nat", "-F", "FLANNEL-POSTRTG"]],
        ["iptables -F", ["iptables-nft", "-F"]],
        ["nft flush ruleset", ["nft", "flush", "ruleset"]],
      ];
      const took: Record<string, number | null> = {};
      for (const [what, cmd] of cases) {
        inNs(ns, cmd);
        expect(iptCount(ns)).toBeLessThan(12);
        took[what] = await within(BACK_MS, () => iptCount(ns) === 12);
      }
      console.log(`repair latency (ms): ${JSON.stringify(took)}`);
      for (const [what] of cases) expect({ what, back: took[what] !== null }).toEqual({ what, back: true });
      expect(tr.stats.repaired).toBeGreaterThanOrEqual(cases.length);
      await k.stop();
    },
    T,
  );

  test(
    "idle for 5 s: no process; churn in other chains and other rules added to FORWARD: no check either",
    async () => {
      const ns = newNs();
      const { tr, lines } = rules(ns, LONG);
      const k = await keeping(tr, lines);
      const before = tr.stats.processesSpawned;
      await Bun.sleep(5000);
      expect(tr.stats.processesSpawned).toBe(before);
      // kube-proxy style: its own chains rewritten again and again; Docker style: its own rules added to FORWARD.
      inNs(ns, ["iptables-nft", "-t", "nat", "-N", "KUBE-SVC-TEST"]);
      for (let i = 0; i < 20; i++) {
        inNs(ns, ["iptables-nft", "-t", "nat", "-A", "KUBE-SVC-TEST", "-d", `10.96.0.${i}`, "-j", "RETURN"]);
        inNs(ns, ["iptables-nft", "-t", "nat", "-F", "KUBE-SVC-TEST"]);
        inNs(ns, ["iptables-nft", "-A", "FORWARD", "-i", `docker${i}`, "-j", "ACCEPT"]);
      }
      await Bun.sleep(500);
      expect(tr.stats.processesSpawned).toBe(before);
      await k.stop();
    },
    T,
  );

  test(
    "deletes of other rules in FORWARD: a few checks, then none until a token comes back (rate limit)",
    async () => {
      const ns = newNs();
      const { tr, lines } = rules(ns, LONG);
      for (let i = 0; i < 30; i++) inNs(ns, ["iptables-nft", "-I", "FORWARD", "-i", `docker${i}`, "-j", "ACCEPT"]);
      const k = await keeping(tr, lines);
      await Bun.sleep(GRACE_MS); // the install wrote the rules: events right after it are checked for free
      const before = tr.stats.processesSpawned;
      for (let i = 0; i < 30; i++) {
        inNs(ns, ["iptables-nft", "-D", "FORWARD", "-i", `docker${i}`, "-j", "ACCEPT"]);
        await Bun.sleep(150);
      }
      await Bun.sleep(500);
      // At most BURST (3) fruitless checks of 2 reads each, whatever the number of events.
      expect(tr.stats.processesSpawned - before).toBeLessThanOrEqual(6);
      expect(tr.stats.processesSpawned - before).toBeGreaterThan(0);
      await k.stop();
    },
    T,
  );

  test(
    "a killed monitor is restarted (polling meanwhile) and repairs again; stop() kills it",
    async () => {
      const ns = newNs();
      const { tr, lines } = rules(ns, { ...LONG, resyncMs: 1000 });
      const k = await keeping(tr, lines);
      const [pid] = tr.watcherPids();
      process.kill(pid!, "SIGKILL");
      expect(await within(10_000, () => tr.watcherPids().length === 1 && tr.watcherPids()[0] !== pid)).not.toBeNull();
      expect(lines.filter((l) => l.includes("nft monitor rules exited")).length).toBe(1);
      await within(5000, () => lines.some((l) => l.includes("running again")));
      inNs(ns, ["iptables-nft", "-F", "FLANNEL-FWD"]);
      expect(await within(BACK_MS, () => iptCount(ns) === 12)).not.toBeNull();
      const [now] = tr.watcherPids();
      await k.stop();
      expect(await within(5000, () => !alive(now!))).not.toBeNull();
      expect(tr.watcherPids()).toEqual([]);
    },
    T,
  );
});

describe("nftables mode: repaired on the change event", () => {
  test(
    "nft delete table ip flannel-ipv4, a flushed chain, a deleted rule: each back at once",
    async () => {
      const ns = newNs();
      const { tr, lines } = rules(ns, { ...LONG, nftables: true });
      const k = await keeping(tr, lines);
      // The start: iptables-legacy-save and iptables-nft-save (leftovers), one read, one transaction, the monitor,
      // and one read-back once it has subscribed (no read before it as well).
      expect(tr.stats.processesSpawned).toBe(6);
      const complete = () => {
        const r = Bun.spawnSync(["ip", "netns", "exec", ns, "nft", "list", "table", "ip", "flannel-ipv4"], {
          stdout: "pipe",
          stderr: "pipe",
        });
        const t = r.stdout.toString();
        return t.includes("ip daddr 10.5.0.0/16 accept") && t.includes("ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade");
      };
      expect(complete()).toBe(true);
      const handle = /ip saddr 10\.5\.0\.0\/16 accept # handle (\d+)/.exec(
        inNs(ns, ["nft", "-a", "list", "chain", "ip", "flannel-ipv4", "forward"]),
      )?.[1];
      expect(handle).toBeDefined();
      const cases: [string, string[]][] = [
        ["table deleted", ["nft", "delete", "table", "ip", "flannel-ipv4"]],
        ["chain flushed", ["nft", "flush", "chain", "ip", "flannel-ipv4", "postrtg"]],
      ];
      const took: Record<string, number | null> = {};
      for (const [what, cmd] of cases) {
        inNs(ns, cmd);
        expect(complete()).toBe(false);
        took[what] = await within(BACK_MS, complete);
      }
      const h = /ip saddr 10\.5\.0\.0\/16 accept # handle (\d+)/.exec(
        inNs(ns, ["nft", "-a", "list", "chain", "ip", "flannel-ipv4", "forward"]),
      )?.[1];
      inNs(ns, ["nft", "delete", "rule", "ip", "flannel-ipv4", "forward", "handle", h!]);
      took["rule deleted"] = await within(BACK_MS, () =>
        inNs(ns, ["nft", "list", "chain", "ip", "flannel-ipv4", "forward"]).includes("ip saddr 10.5.0.0/16 accept"),
      );
      console.log(`repair latency (ms): ${JSON.stringify(took)}`);
      for (const what of Object.keys(took)) expect({ what, back: took[what] !== null }).toEqual({ what, back: true });
      await k.stop();
    },
    T,
  );
});

describe("--ip-blackhole-route", () => {
  test(
    "the blackhole route deleted by hand is back at once (ip monitor route); idle: no process",
    async () => {
      const ns = newNs();
      const { tr, lines } = rules(ns, { ...LONG, blackhole: true, masq: false });
      const k = await keeping(tr, lines, 2);
      const before = tr.stats.processesSpawned;
      inNs(ns, ["ip", "route", "add", "10.5.9.0/24", "dev", "lo"]); // someone else's route: no check
      await Bun.sleep(1000);
      expect(tr.stats.processesSpawned).toBe(before);
      const has = () => inNs(ns, ["ip", "route", "show", "type", "blackhole"]).includes("blackhole 10.5.52.0/24");
      inNs(ns, ["ip", "route", "del", "blackhole", "10.5.52.0/24", "metric", "4294967295"]);
      expect(has()).toBe(false);
      expect(await within(BACK_MS, has)).not.toBeNull();
      await k.stop();
    },
    T,
  );
});

describe("iptables-legacy: no change events", () => {
  test(
    "polls every --iptables-resync (says so at start), starts no monitor, and repairs within the period",
    async () => {
      const ns = newNs();
      inNs(ns, ["iptables-legacy", "-A", "INPUT", "-i", "other0", "-j", "ACCEPT"]);
      const { tr, lines } = rules(ns, { ...LONG, resyncMs: 1000 });
      expect(await tr.install()).toBe(true);
      const ac = new AbortController();
      const loop = tr.run(ac.signal);
      expect(
        await within(10_000, () => lines.some((l) => l.includes("iptables-legacy reports no changes; checking every 1 s"))),
      ).not.toBeNull();
      inNs(ns, ["iptables-legacy", "-F", "FLANNEL-FWD"]);
      const count = () => ourLines(inNs(ns, ["iptables-legacy-save"])).length;
      expect(await within(10_000, () => count() === 12)).not.toBeNull();
      expect(tr.watcherPids()).toEqual([]);
      ac.abort();
      await loop;
    },
    T,
  );
});

describe("the monitor's life", () => {
  test(
    "an agent killed with SIGKILL takes its monitor with it (parent-death signal), even on a quiet host",
    async () => {
      const ns = newNs();
      const src = `${import.meta.dir}/../../src/rules/traffic-rules.ts`;
      const code = `
        import { TrafficRules } from ${JSON.stringify(src)};
        const log = { info() {}, warn() {}, error() {}, debug() {} };
        const tr = new TrafficRules({ network: "10.5.0.0/16", subnet: "10.5.52.0/24", masq: true, forward: true,
          fullyRandomDisable: false, nftables: false, blackhole: false, resyncMs: 300000, previous: null, log, netns: ${JSON.stringify(ns)} });
        if (!(await tr.install())) process.exit(3);
        void tr.run(new AbortController().signal);
        for (let i = 0; i < 400 && tr.watcherPids().length === 0; i++) await Bun.sleep(25);
        console.log(tr.watcherPids()[0]);
        await Bun.sleep(60000);`;
      const child = Bun.spawn([process.execPath, "-e", code], { stdout: "pipe", stderr: "pipe" });
      try {
        const reader = (child.stdout as ReadableStream<Uint8Array>).getReader();
        const first = await Promise.race([reader.read(), Bun.sleep(15_000).then(() => null)]);
        const pid = Number(new TextDecoder().decode(first?.value ?? new Uint8Array()).trim());
        expect(pid).toBeGreaterThan(0);
        expect(alive(pid)).toBe(true);
        child.kill("SIGKILL");
        await child.exited;
        expect(await within(5000, () => !alive(pid))).not.toBeNull();
      } finally {
        if (child.exitCode === null) child.kill("SIGKILL");
      }
    },
    T,
  );
});
