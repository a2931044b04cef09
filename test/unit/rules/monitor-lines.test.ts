// The watchers' line handling (no root): bounded line splitting, which `nft monitor rules` lines concern our rules
// (the lines are what nft 1.0.6 printed on this machine for iptables-nft and nft changes), and route lines.
import { describe, expect, test } from "bun:test";
import { LINE_HEAD_MAX, LineSplitter } from "../../../src/supervised-process.ts";
import {
  type MonitorLine,
  type WatchTarget,
  nftEventMatters,
  nftEventRemovesOurs,
  parseNftRuleEvent,
  routeLineMatters,
} from "../../../src/rules/monitor-lines.ts";

const enc = (s: string) => new TextEncoder().encode(s);
const line = (text: string): MonitorLine => ({ text, truncated: false });

describe("LineSplitter", () => {
  test("lines across chunks, a multi-byte character split between chunks, nothing before the newline", () => {
    const s = new LineSplitter();
    expect(s.push(enc("add rule ip filter FORWARD"))).toEqual([]);
    expect(s.push(enc(" handle 4\ndelete rule ip nat POST"))).toEqual([line("add rule ip filter FORWARD handle 4")]);
    const bytes = enc("ROUTING handle 7 é\n\n");
    expect(s.push(bytes.slice(0, bytes.length - 3))).toEqual([]);
    expect(s.push(bytes.slice(bytes.length - 3))).toEqual([line("delete rule ip nat POSTROUTING handle 7 é"), line("")]);
  });

  test("a huge line keeps only its head, in bounded memory, and the next line is whole", () => {
    const s = new LineSplitter();
    const head = "add rule ip filter FORWARD ip saddr { ";
    expect(s.push(enc(head))).toEqual([]);
    for (let i = 0; i < 200; i++) expect(s.push(enc("10.0.0.1, ".repeat(1000)))).toEqual([]);
    const out = s.push(enc("} accept\ndelete rule ip filter FORWARD handle 9\n"));
    expect(out).toHaveLength(2);
    expect(out[0]!.truncated).toBe(true);
    expect(out[0]!.text.length).toBe(LINE_HEAD_MAX);
    expect(out[0]!.text.startsWith(head)).toBe(true);
    expect(out[1]).toEqual(line("delete rule ip filter FORWARD handle 9"));
  });
});

// iptables-nft's targets for masquerade and forward rules, as IptablesEngine.watchTargets builds them.
const IPT: WatchTarget[] = [
  { family: "ip", table: "nat", chain: "FLANNEL-POSTRTG", ours: true },
  { family: "ip", table: "nat", chain: "POSTROUTING", addsOnlyJumpingTo: "FLANNEL-POSTRTG" },
  { family: "ip", table: "filter", chain: "FLANNEL-FWD", ours: true },
  { family: "ip", table: "filter", chain: "FORWARD", addsOnlyJumpingTo: "FLANNEL-FWD" },
];
const NFT: WatchTarget[] = [{ family: "ip", table: "flannel-ipv4", ours: true }]; // as the engines give them
const matters = (text: string, targets: WatchTarget[], truncated = false) => {
  const ev = parseNftRuleEvent({ text, truncated });
  return ev !== null && nftEventMatters(ev, targets);
};

describe("nft monitor rules lines", () => {
  test("parsed: op, family, table, chain", () => {
    expect(parseNftRuleEvent(line("delete rule ip nat POSTROUTING handle 7"))).toEqual({
      op: "delete",
      family: "ip",
      table: "nat",
      chain: "POSTROUTING",
      rest: ["handle", "7"],
      truncated: false,
    });
    expect(parseNftRuleEvent(line("add rule ip filter FLANNEL-FWD ip saddr 10.5.0.0/16  counter packets 0 bytes 0 accept"))?.op).toBe(
      "add",
    );
    for (const other of [
      "",
      "# new generation 5 by process 31056 (iptables-nft)",
      "add table ip nat",
      "delete chain ip filter FORWARD",
      "add rule ip",
    ])
      expect(parseNftRuleEvent(line(other))).toBeNull();
  });

  test("iptables-nft: every event in our chains; deletes in FORWARD/POSTROUTING; adds there only when they jump to us", () => {
    // iptables -F / -D / flush ruleset / firewalld reload: rule deletes, our chains or the jump's chain.
    expect(matters("delete rule ip filter FLANNEL-FWD handle 5", IPT)).toBe(true);
    expect(matters("delete rule ip filter FORWARD handle 4", IPT)).toBe(true);
    expect(matters("delete rule ip nat POSTROUTING handle 2", IPT)).toBe(true);
    // A rule added to our chain (extra, out of order) or a second jump: checked.
    expect(matters("add rule ip filter FLANNEL-FWD counter packets 0 bytes 0 drop", IPT)).toBe(true);
    expect(matters("add rule ip filter FORWARD  counter packets 0 bytes 0 jump FLANNEL-FWD", IPT)).toBe(true);
    // Docker and kube-proxy adding their own rules, or churning their own chains: not ours.
    expect(matters('add rule ip filter FORWARD iifname "docker0" counter packets 0 bytes 0 accept', IPT)).toBe(false);
    expect(matters("add rule ip nat POSTROUTING counter packets 0 bytes 0 jump KUBE-POSTROUTING", IPT)).toBe(false);
    expect(matters("delete rule ip nat KUBE-SVC-ABCDEF handle 99", IPT)).toBe(false);
    expect(matters("delete rule ip6 filter FORWARD handle 4", IPT)).toBe(false);
    expect(matters("delete rule ip filter INPUT handle 4", IPT)).toBe(false);
    // A line cut short could hide the jump: checked to be safe.
    expect(matters("add rule ip filter FORWARD ip saddr { 10.0.0.1, 10.0.0.2", IPT, true)).toBe(true);
  });

  test("a removal of ours: a delete in our own chain or table, not in the built-in chains others churn", () => {
    const removes = (text: string, targets: WatchTarget[]) => {
      const ev = parseNftRuleEvent(line(text));
      return ev !== null && nftEventRemovesOurs(ev, targets);
    };
    expect(removes("delete rule ip filter FLANNEL-FWD handle 5", IPT)).toBe(true);
    expect(removes("delete rule ip nat FLANNEL-POSTRTG handle 9", IPT)).toBe(true);
    expect(removes("add rule ip filter FLANNEL-FWD counter packets 0 bytes 0 drop", IPT)).toBe(false);
    expect(removes("delete rule ip filter FORWARD handle 4", IPT)).toBe(false); // Docker and kube-proxy delete there too
    expect(removes("delete rule ip flannel-ipv4 forward handle 2", NFT)).toBe(true);
    expect(removes("add rule ip flannel-ipv4 forward accept", NFT)).toBe(false);
    expect(removes("delete rule ip filter forward handle 2", NFT)).toBe(false);
  });

  test("nftables mode: every rule event in table ip flannel-ipv4, nothing elsewhere", () => {
    expect(matters("delete rule ip flannel-ipv4 forward handle 2", NFT)).toBe(true);
    expect(matters("add rule ip flannel-ipv4 forward accept", NFT)).toBe(true);
    expect(matters("add rule ip flannel-ipv4 postrtg meta mark 0x00004000 return", NFT)).toBe(true);
    expect(matters("delete rule inet flannel-ipv4 forward handle 2", NFT)).toBe(false);
    expect(matters("delete rule ip filter forward handle 2", NFT)).toBe(false);
    expect(matters('delete rule ip "flannel-ipv4 x" forward handle 2', NFT)).toBe(false);
  });
});

describe("ip monitor route lines", () => {
  test("only lines about our subnet's prefix", () => {
    const P = "10.5.52.0/24";
    expect(routeLineMatters(line("Deleted blackhole 10.5.52.0/24 metric 4294967295"), P)).toBe(true);
    expect(routeLineMatters(line("10.5.52.0/24 dev eth9 scope link metric 4294967295"), P)).toBe(true);
    expect(routeLineMatters(line("10.5.7.0/24 via 10.5.7.0 dev flannel.1 onlink"), P)).toBe(false);
    expect(routeLineMatters(line("blackhole 10.5.52.0/25"), P)).toBe(false);
  });
});
