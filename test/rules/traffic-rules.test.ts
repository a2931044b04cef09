// Traffic rules against the real kernel: TrafficRules driving iptables-restore / iptables-save / nft inside a
// throw-away network namespace per test (nothing in the root namespace), including repair after a flush and switching
// engines. The e2e tests (test/e2e/traffic-rules.test.ts) show the traffic effect between lab hosts.
import { afterEach, describe, expect, test } from "bun:test";
import { detectIptables } from "../../src/rules/engines.ts";
import { makeExec } from "../../src/rules/exec.ts";
import type { TrafficRules } from "../../src/rules/traffic-rules.ts";
import { N, cleanup, inNs, newNs, ourLines, rules } from "./helpers.ts";

afterEach(cleanup);

/** Runs the resync loop until cond() holds (bounded) and stops it. */
async function resyncUntil(tr: TrafficRules, cond: () => boolean, ms = 5000): Promise<boolean> {
  const ac = new AbortController();
  const loop = tr.run(ac.signal);
  const deadline = Date.now() + ms;
  let ok = false;
  for (let i = 0; i < 200 && Date.now() < deadline; i++) {
    if ((ok = cond())) break;
    await Bun.sleep(50);
  }
  ac.abort();
  await loop;
  return ok;
}

const T = 30_000;

describe("iptables mode", () => {
  test(
    "installs flanneld's exact rules in one go, after what is already in FORWARD/POSTROUTING, and keeps it",
    async () => {
      const ns = newNs();
      inNs(ns, ["iptables-nft", "-A", "FORWARD", "-i", "other0", "-j", "DROP"]);
      inNs(ns, ["iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-o", "other0", "-j", "MASQUERADE"]);
      const { tr } = rules(ns);
      expect(await tr.install()).toBe(true);
      expect(tr.missing()).toEqual([]);
      expect(ourLines(inNs(ns, ["iptables-nft-save", "-t", "filter"]))).toEqual([
        ":FLANNEL-FWD - [0:0]",
        '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
        '-A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
        '-A FLANNEL-FWD -d 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
      ]);
      expect(ourLines(inNs(ns, ["iptables-nft-save", "-t", "nat"]))).toEqual([
        ":FLANNEL-POSTRTG - [0:0]",
        '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
        '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
        '-A FLANNEL-POSTRTG -s 10.5.52.0/24 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
        '-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.52.0/24 -m comment --comment "flanneld masq" -j RETURN',
        '-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.52.0/24 -m comment --comment "flanneld masq" -j RETURN',
        '-A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
        '-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
      ]);
      // The jump is appended (flanneld: -A): the rule that was there stays first and untouched.
      const fwd = inNs(ns, ["iptables-nft", "-S", "FORWARD"]).trim().split("\n");
      expect(fwd).toEqual([
        "-P FORWARD ACCEPT",
        "-A FORWARD -i other0 -j DROP",
        '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
      ]);
      // A second agent start finds everything in place and changes nothing.
      const again = rules(ns);
      expect(await again.tr.install()).toBe(true);
      expect(again.lines.some((l) => l.includes("already in place"))).toBe(true);
      expect(inNs(ns, ["iptables-nft", "-S", "FORWARD"]).trim().split("\n")).toEqual(fwd);
    },
    T,
  );

  test(
    "a flushed chain and a lost jump come back within one resync period, counted and logged once",
    async () => {
      const ns = newNs();
      const { tr, lines } = rules(ns);
      expect(await tr.install()).toBe(true);
      inNs(ns, ["iptables-nft", "-F", "FLANNEL-FWD"]);
      inNs(ns, ["iptables-nft", "-t", "nat", "-F", "POSTROUTING"]);
      const back = () =>
        ourLines(inNs(ns, ["iptables-nft-save", "-t", "filter"])).length === 4 &&
        ourLines(inNs(ns, ["iptables-nft-save", "-t", "nat"])).length === 8;
      expect(back()).toBe(false);
      expect(await resyncUntil(tr, back, 3000)).toBe(true);
      expect(tr.stats.repaired).toBe(3); // two forward rules and the masquerade jump
      expect(lines.filter((l) => l.startsWith("warn traffic rules repaired")).length).toBe(1);
    },
    T,
  );

  test(
    "--iptables-forward-rules=false and no --ip-masq: no rules at all; leftovers of an earlier run are removed",
    async () => {
      const ns = newNs();
      const before = inNs(ns, ["iptables-nft-save"]);
      const off = rules(ns, { masq: false, forward: false });
      expect(await off.tr.install()).toBe(true);
      expect(ourLines(inNs(ns, ["iptables-nft-save"]))).toEqual([]);
      expect(countA(inNs(ns, ["iptables-nft-save"]))).toBe(countA(before));
      const on = rules(ns);
      expect(await on.tr.install()).toBe(true);
      expect(ourLines(inNs(ns, ["iptables-nft-save"])).length).toBe(12);
      const off2 = rules(ns, { masq: false, forward: false });
      expect(await off2.tr.install()).toBe(true);
      expect(ourLines(inNs(ns, ["iptables-nft-save"]))).toEqual([]);
    },
    T,
  );

  test(
    "--ip-masq-fully-random-disable leaves --random-fully out",
    async () => {
      const ns = newNs();
      const { tr } = rules(ns, { fullyRandomDisable: true, forward: false });
      expect(await tr.install()).toBe(true);
      const nat = inNs(ns, ["iptables-nft-save", "-t", "nat"]);
      expect(nat).toContain("-j MASQUERADE\n");
      expect(nat).not.toContain("random-fully");
    },
    T,
  );

  test(
    "a host on iptables-legacy gets its rules there and nothing in iptables-nft (never both)",
    async () => {
      const ns = newNs();
      inNs(ns, ["iptables-legacy", "-A", "INPUT", "-i", "other0", "-j", "ACCEPT"]);
      expect((await detectIptables(makeExec(ns))).flavour).toBe("legacy");
      const { tr } = rules(ns);
      expect(await tr.install()).toBe(true);
      expect(ourLines(inNs(ns, ["iptables-legacy-save"])).length).toBe(12);
      expect(ourLines(inNs(ns, ["iptables-nft-save"]))).toEqual([]);
    },
    T,
  );

  test(
    "a changed subnet since the last run: the old rule set is replaced in the same transaction; nothing else touched",
    async () => {
      const ns = newNs();
      const old = rules(ns, { subnet: "10.5.9.0/24", blackhole: true });
      expect(await old.tr.install()).toBe(true);
      const { tr, lines } = rules(ns, { previous: { network: N, subnet: "10.5.9.0/24" }, blackhole: true });
      expect(await tr.install()).toBe(true);
      const nat = inNs(ns, ["iptables-nft-save", "-t", "nat"]);
      expect(nat).not.toContain("10.5.9.0/24");
      expect(nat).toContain("-s 10.5.52.0/24 -d 10.5.0.0/16");
      expect(lines.some((l) => l.includes("changed since the last run"))).toBe(true);
      const bh = inNs(ns, ["ip", "route", "show", "type", "blackhole"]);
      expect(bh).toContain("10.5.52.0/24");
      expect(bh).not.toContain("10.5.9.0/24");
    },
    T,
  );
});

const countA = (dump: string) => dump.split("\n").filter((l) => l.startsWith("-A ")).length;

describe("nftables mode", () => {
  test(
    "table ip flannel-ipv4 installed in one transaction, repaired after a flush, and iptables leftovers removed",
    async () => {
      const ns = newNs();
      const ipt = rules(ns);
      expect(await ipt.tr.install()).toBe(true);
      inNs(ns, ["iptables-nft", "-A", "FORWARD", "-i", "other0", "-j", "DROP"]);
      const { tr, lines } = rules(ns, { nftables: true });
      expect(await tr.install()).toBe(true);
      // Switching engines: our iptables chains are gone, the other rule stays.
      expect(ourLines(inNs(ns, ["iptables-nft-save"]))).toEqual([]);
      expect(inNs(ns, ["iptables-nft-save", "-t", "filter"])).toContain("-A FORWARD -i other0 -j DROP");
      expect(lines.some((l) => l.includes("removed leftovers of the other engine"))).toBe(true);
      const listed = inNs(ns, ["nft", "list", "table", "ip", "flannel-ipv4"]);
      expect(listed).toContain("type nat hook postrouting priority srcnat; policy accept;");
      expect(listed).toContain("ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random");
      expect(listed).toContain("ip saddr != 10.5.52.0/24 ip daddr 10.5.0.0/16 return");
      expect(listed).toContain("type filter hook forward priority filter; policy accept;");
      inNs(ns, ["nft", "flush", "chain", "ip", "flannel-ipv4", "forward"]);
      const back = () => inNs(ns, ["nft", "list", "chain", "ip", "flannel-ipv4", "forward"]).includes("ip daddr 10.5.0.0/16 accept");
      expect(back()).toBe(false);
      expect(await resyncUntil(tr, back, 3000)).toBe(true);
      expect(tr.stats.repaired).toBe(2);
      // Back to iptables mode: the nftables table goes.
      const again = rules(ns);
      expect(await again.tr.install()).toBe(true);
      expect(inNs(ns, ["nft", "list", "tables"])).not.toContain("flannel-ipv4");
      expect(ourLines(inNs(ns, ["iptables-nft-save"])).length).toBe(12);
    },
    T,
  );

  test(
    "nothing asked for: no table",
    async () => {
      const ns = newNs();
      const { tr } = rules(ns, { nftables: true, masq: false, forward: false });
      expect(await tr.install()).toBe(true);
      expect(inNs(ns, ["nft", "list", "tables"])).not.toContain("flannel");
    },
    T,
  );
});

describe("--ip-blackhole-route", () => {
  test(
    "a blackhole route for our subnet sits behind the connected route and comes back when deleted",
    async () => {
      const ns = newNs();
      inNs(ns, ["ip", "link", "add", "cni0", "type", "bridge"]);
      inNs(ns, ["ip", "addr", "add", "10.5.52.1/24", "dev", "cni0"]);
      inNs(ns, ["ip", "link", "set", "cni0", "up"]);
      const { tr } = rules(ns, { blackhole: true, masq: false, forward: false });
      expect(await tr.install()).toBe(true);
      const has = () => inNs(ns, ["ip", "route", "show", "type", "blackhole"]).includes("blackhole 10.5.52.0/24");
      expect(has()).toBe(true);
      // The connected route still wins.
      expect(inNs(ns, ["ip", "route", "get", "10.5.52.9"])).toContain("dev cni0");
      inNs(ns, ["ip", "route", "del", "blackhole", "10.5.52.0/24", "metric", "4294967295"]);
      expect(has()).toBe(false);
      expect(await resyncUntil(tr, has, 3000)).toBe(true);
      expect(tr.stats.repaired).toBe(1);
    },
    T,
  );
});
