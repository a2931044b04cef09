// The agent keeps its traffic rules without polling: lab hosts run the compiled binary with --ip-masq,
// --ip-blackhole-route and --iptables-resync 300 (so a read every period cannot be what repairs anything). An idle
// agent starts no rules process at all (flannel_bin_rules_processes_spawned_total does not move for 10 s), and a
// masquerade rule, a forward rule or the blackhole route deleted by hand is back within a second or so (5 s bound on
// this loaded machine; polling would take 300 s), counted in /metrics.
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { labDown, labUp } from "../../src/lab/lab.ts";
import { execIn } from "../../src/lab/netns.ts";
import { ensureBinary, host, labState, testName, waitUntil } from "./helpers.ts";

const T = 120_000;
const lab = { name: testName("tre") };

afterAll(async () => {
  const r = await labDown(lab);
  if (r.errors.length) console.error(r.errors);
}, 60_000);

const sh = async (netns: string, cmd: string[]) => (await execIn(netns, cmd, { timeoutMs: 15_000 })).stdout;
const ours = (dump: string) => dump.split("\n").filter((l) => /FLANNEL|flanneld/.test(l));
const metric = async (netns: string, name: string) => {
  const text = await sh(netns, ["curl", "-sf", "--max-time", "2", "http://127.0.0.1:8471/metrics"]);
  const m = new RegExp(`^${name} (\\d+)$`, "m").exec(text);
  return m ? Number(m[1]) : -1;
};

describe("traffic rules without polling (iptables-nft, --iptables-resync 300)", () => {
  test(
    "idle for 10 s: no rules process; each rule or route deleted by hand is back at once",
    async () => {
      await labDown(lab); // leftovers of an interrupted earlier run (only what its lab.json recorded)
      const report = await labUp({
        ...lab,
        hosts: 2,
        backend: "vxlan",
        store: "sqlite",
        binary: await ensureBinary(),
        agentArgs: ["--ip-masq", "--ip-blackhole-route", "--iptables-resync", "300"],
      });
      expect(report.pairs.filter((p) => !p.ok)).toEqual([]);
      const h1 = host(lab, 1);
      const log = () => readFileSync(labState(lab).hosts[0]!.logFile, "utf8");
      await waitUntil("the rules are watched", 10_000, async () => log().includes("traffic rules: watching for changes"));
      expect(log()).toContain("`nft monitor rules`, `ip monitor route`");
      // Settled: the check after the monitors subscribed is done (no new process for 1 s).
      let last = -1;
      let since = Date.now();
      await waitUntil("the rules step is quiet", 20_000, async () => {
        const n = await metric(h1.netns, "flannel_bin_rules_processes_spawned_total");
        if (n !== last) [last, since] = [n, Date.now()];
        return n > 0 && Date.now() - since >= 1000;
      });
      const before = await metric(h1.netns, "flannel_bin_rules_processes_spawned_total");
      await Bun.sleep(10_000);
      expect(await metric(h1.netns, "flannel_bin_rules_processes_spawned_total")).toBe(before);

      const subnet = /FLANNEL_SUBNET=(\d+\.\d+\.\d+)\.\d+\/(\d+)/.exec(readFileSync(labState(lab).hosts[0]!.subnetFile, "utf8"))!;
      const P = `${subnet[1]}.0/${subnet[2]}`;
      const count = async () => ours(await sh(h1.netns, ["iptables-save"])).length;
      const blackhole = async () => (await sh(h1.netns, ["ip", "route", "show", "type", "blackhole"])).includes(P);
      expect(await count()).toBe(12);
      expect(await blackhole()).toBe(true);
      const repairedBefore = await metric(h1.netns, "flannel_bin_rules_repaired_total");
      const took: Record<string, number> = {};
      const cases: [string, string[], () => Promise<boolean>][] = [
        ["masquerade rule", ["iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "5"], async () => (await count()) === 12],
        ["forward rule", ["iptables", "-D", "FLANNEL-FWD", "2"], async () => (await count()) === 12],
        ["blackhole route", ["ip", "route", "del", "blackhole", P, "metric", "4294967295"], blackhole],
      ];
      for (const [what, cmd, back] of cases) {
        await sh(h1.netns, cmd);
        const start = Date.now();
        // Well within a second when the machine is not loaded (printed below); the bound allows for other sessions.
        await waitUntil(`${what} back`, 5000, back, 50);
        took[what] = Date.now() - start;
      }
      console.log(`repair latency in the agent (ms): ${JSON.stringify(took)}`);
      // Counted once the fix has been read back (a moment after the rule is visible again).
      await waitUntil(
        "3 repairs counted",
        5000,
        async () => (await metric(h1.netns, "flannel_bin_rules_repaired_total")) >= repairedBefore + 3,
      );
      expect(await metric(h1.netns, "flannel_bin_rules_repaired_total")).toBe(repairedBefore + 3);
    },
    T,
  );
});
