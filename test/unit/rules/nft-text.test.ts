import { describe, expect, test } from "bun:test";
import { nftChains, nftProblems, nftScript, parseNftList } from "../../../src/rules/nft-text.ts";

const RS = { network: "10.5.0.0/16", subnet: "10.5.52.0/24", masq: true, forward: true, randomFully: true };

const prefix = (addr: string, len: number) => ({ prefix: { addr, len } });
const match = (field: string, right: unknown, op = "==") => ({ match: { op, left: { payload: { protocol: "ip", field } }, right } });
// `nft -j list table ip flannel-ipv4` after our script, as nft 1.0.6 prints it (trimmed to what matters).
const LISTED = {
  nftables: [
    { metainfo: { version: "1.0.6" } },
    { table: { family: "ip", name: "flannel-ipv4", handle: 4 } },
    { chain: { family: "ip", table: "flannel-ipv4", name: "postrtg", type: "nat", hook: "postrouting", prio: 100, policy: "accept" } },
    { chain: { family: "ip", table: "flannel-ipv4", name: "forward", type: "filter", hook: "forward", prio: 0, policy: "accept" } },
    { rule: { chain: "postrtg", expr: [{ match: { op: "==", left: { meta: { key: "mark" } }, right: 16384 } }, { return: null }] } },
    {
      rule: { chain: "postrtg", expr: [match("saddr", prefix("10.5.52.0", 24)), match("daddr", prefix("10.5.0.0", 16)), { return: null }] },
    },
    {
      rule: { chain: "postrtg", expr: [match("saddr", prefix("10.5.0.0", 16)), match("daddr", prefix("10.5.52.0", 24)), { return: null }] },
    },
    {
      rule: {
        chain: "postrtg",
        expr: [match("saddr", prefix("10.5.52.0", 24), "!="), match("daddr", prefix("10.5.0.0", 16)), { return: null }],
      },
    },
    {
      rule: {
        chain: "postrtg",
        expr: [
          match("saddr", prefix("10.5.0.0", 16)),
          match("daddr", prefix("224.0.0.0", 4), "!="),
          { masquerade: { flags: "fully-random" } },
        ],
      },
    },
    {
      rule: {
        chain: "postrtg",
        expr: [
          match("saddr", prefix("10.5.0.0", 16), "!="),
          match("daddr", prefix("10.5.0.0", 16)),
          { masquerade: { flags: "fully-random" } },
        ],
      },
    },
    { rule: { chain: "forward", expr: [match("saddr", prefix("10.5.0.0", 16)), { accept: null }] } },
    { rule: { chain: "forward", expr: [match("daddr", prefix("10.5.0.0", 16)), { accept: null }] } },
  ],
};

describe("nftables mode", () => {
  test("the script replaces the table in one transaction", () => {
    expect(nftScript(nftChains(RS))).toBe(
      [
        "add table ip flannel-ipv4",
        "delete table ip flannel-ipv4",
        "table ip flannel-ipv4 {",
        "  chain postrtg {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        "    meta mark 0x4000 return",
        "    ip saddr 10.5.52.0/24 ip daddr 10.5.0.0/16 return",
        "    ip saddr 10.5.0.0/16 ip daddr 10.5.52.0/24 return",
        "    ip saddr != 10.5.52.0/24 ip daddr 10.5.0.0/16 return",
        "    ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "    ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random",
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        "    ip saddr 10.5.0.0/16 accept",
        "    ip daddr 10.5.0.0/16 accept",
        "  }",
        "}",
        "",
      ].join("\n"),
    );
  });
  test("nothing wanted: the script only removes the table", () => {
    expect(nftScript([])).toBe("add table ip flannel-ipv4\ndelete table ip flannel-ipv4\n");
  });
  test("no fully-random when disabled", () => {
    expect(nftChains({ ...RS, randomFully: false })[0]!.rules[4]).toBe("ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade");
  });
  test("the JSON listing renders back to the same rules: no problems", () => {
    const listed = parseNftList(JSON.stringify(LISTED));
    expect(listed.chains.get("postrtg")!.rules).toEqual(nftChains(RS)[0]!.rules);
    expect(nftProblems(listed, nftChains(RS))).toEqual([]);
  });
  test("a flushed chain, a missing table, a wrong subnet and a leftover are named", () => {
    const flushed = { nftables: LISTED.nftables.filter((x) => !("rule" in x && x.rule?.chain === "forward")) };
    expect(nftProblems(parseNftList(JSON.stringify(flushed)), nftChains(RS))).toEqual([
      "nftables rule missing in forward: ip saddr 10.5.0.0/16 accept",
      "nftables rule missing in forward: ip daddr 10.5.0.0/16 accept",
    ]);
    expect(nftProblems(null, nftChains(RS))).toEqual(["nftables table ip flannel-ipv4 missing"]);
    expect(nftProblems(parseNftList(JSON.stringify(LISTED)), nftChains({ ...RS, subnet: "10.5.53.0/24" })).length).toBeGreaterThan(0);
    expect(nftProblems(parseNftList(JSON.stringify(LISTED)), [])).toEqual(["nftables table ip flannel-ipv4 left over"]);
    expect(nftProblems(parseNftList(JSON.stringify(LISTED)), nftChains({ ...RS, masq: false }))).toEqual([
      "nftables chain postrtg is not ours to keep (feature off)",
    ]);
  });
  test("unknown expressions never compare equal", () => {
    const odd = { nftables: [{ chain: { name: "forward" } }, { rule: { chain: "forward", expr: [{ weird: 1 }, { accept: null }] } }] };
    expect(parseNftList(JSON.stringify(odd)).chains.get("forward")!.rules).toEqual(["? accept"]);
  });
  test("a /32 subnet is written as nft lists it", () => {
    expect(nftChains({ ...RS, subnet: "10.5.52.7/32" })[0]!.rules[1]).toBe("ip saddr 10.5.52.7 ip daddr 10.5.0.0/16 return");
  });
});
