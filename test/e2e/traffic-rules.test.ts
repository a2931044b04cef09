// Traffic rules end to end, on lab hosts with containers: Docker's `iptables -P FORWARD DROP` in every host, then
// containers still reach each other (forward rules) on both backends; with --ip-masq a container reaches an
// "outside" namespace on the underlay that has no route to the pod network, while pod-to-pod traffic keeps the pod's
// source address; the rule text is flanneld's; a flushed chain comes back; the same in nftables mode (masquerade, rule
// text, repair); and no rules at all with --iptables-forward-rules=false and no --ip-masq (then FORWARD DROP does cut the containers off).
import { afterAll, describe, expect, test } from "bun:test";
import { type LabHost, labDown, labStartHost, labStopHost, labUp, pingFrom } from "../../src/lab/lab.ts";
import { execIn, ip } from "../../src/lab/netns.ts";
import { ensureBinary, host, labState, updateLabState, waitUntil, testName } from "./helpers.ts";

const T = 120_000;
const OUTSIDE_IP = "192.0.2.200";
const labs: { name: string }[] = [];

afterAll(async () => {
  for (const lab of labs) {
    const r = await labDown(lab);
    if (r.errors.length) console.error(r.errors);
  }
}, 60_000);

async function up(base: string, backend: "vxlan" | "host-gw", agentArgs: string[]): Promise<{ name: string }> {
  const lab = { name: testName(base) };
  await labDown(lab); // leftovers of an interrupted earlier run (only what its lab.json recorded)
  labs.push(lab);
  const report = await labUp({ ...lab, hosts: 2, backend, store: "sqlite", binary: await ensureBinary(), agentArgs });
  expect(report.pairs.filter((p) => !p.ok)).toEqual([]);
  await addOutside(lab);
  return lab;
}

/** A namespace on the underlay bridge with only its connected /24: it cannot answer a pod address. */
async function addOutside(lab: { name: string }): Promise<void> {
  const s = labState(lab);
  const ns = `${lab.name}-x`;
  updateLabState(lab, (st) => st.namespaces.push(ns)); // recorded first: labDown removes it whatever happens
  await execIn(s.underlay, ["true"]);
  await ip(["netns", "add", ns]);
  await ip(["link", "add", "vx0", "type", "veth", "peer", "name", "eth0", "netns", ns], s.underlay);
  await ip(["link", "set", "vx0", "master", "br0", "up"], s.underlay);
  await ip(["addr", "add", `${OUTSIDE_IP}/24`, "dev", "eth0"], ns);
  await ip(["link", "set", "eth0", "up"], ns);
  await ip(["link", "set", "lo", "up"], ns);
}

const sh = async (netns: string, cmd: string[]) => (await execIn(netns, cmd, { timeoutMs: 15_000 })).stdout;
const ours = (dump: string) => dump.split("\n").filter((l) => /FLANNEL|flanneld/.test(l));
const subnetOf = (h: LabHost) => {
  const env = labState({ name: h.netns.replace(/-h\d+$/, "") }).hosts.find((x) => x.netns === h.netns)!;
  const text = require("node:fs").readFileSync(env.subnetFile, "utf8") as string;
  const m = /FLANNEL_SUBNET=(\d+)\.(\d+)\.(\d+)\.\d+\/(\d+)/.exec(text)!;
  return `${m[1]}.${m[2]}.${m[3]}.0/${m[4]}`;
};
const dropForward = async (lab: { name: string }) => {
  for (const h of labState(lab).hosts) await sh(h.netns, ["iptables", "-P", "FORWARD", "DROP"]);
};
const ping = async (from: LabHost, to: string) => (await pingFrom(from.containerNetns!, to, { count: 2 })).ok;
const metric = async (h: LabHost, name: string) => {
  const text = await sh(h.netns, ["curl", "-sf", "--max-time", "2", "http://127.0.0.1:8471/metrics"]);
  const m = new RegExp(`^${name} (\\d+)$`, "m").exec(text);
  return m ? Number(m[1]) : -1;
};

/** Outside reached only through masquerade (it sees the host's address), pod-to-pod arrives with the pod's address. */
async function masqueradeChecks(lab: { name: string }): Promise<void> {
  const [h1, h2] = [host(lab, 1), host(lab, 2)];
  // Counters where the packets arrive (rules without a target only count).
  await sh(h2.netns, ["iptables", "-t", "mangle", "-A", "PREROUTING", "-s", h1.containerIP!, "-d", h2.containerIP!, "-p", "icmp"]);
  const x = `${lab.name}-x`;
  await sh(x, ["iptables", "-t", "mangle", "-A", "PREROUTING", "-s", "10.5.0.0/16"]);
  await sh(x, ["iptables", "-t", "mangle", "-A", "PREROUTING", "-s", h1.publicIP]);
  expect(await ping(h1, h2.containerIP!)).toBe(true);
  expect(await ping(h1, OUTSIDE_IP)).toBe(true);
  const packets = async (netns: string, src: string) => {
    const rows = (await sh(netns, ["iptables", "-t", "mangle", "-L", "PREROUTING", "-v", "-x", "-n"])).split("\n");
    return Number(
      rows
        .find((l) => l.trim().split(/\s+/)[6] === src)
        ?.trim()
        .split(/\s+/)[0],
    );
  };
  expect(await packets(h2.netns, h1.containerIP!)).toBeGreaterThan(0);
  expect(await packets(x, "10.5.0.0/16")).toBe(0);
  expect(await packets(x, h1.publicIP)).toBeGreaterThan(0);
  for (const ns of [h2.netns, x]) await sh(ns, ["iptables", "-t", "mangle", "-F", "PREROUTING"]);
}

describe("iptables mode, vxlan, --ip-masq", () => {
  let lab: { name: string };
  test(
    "FORWARD DROP in every host: containers still ping across hosts",
    async () => {
      lab = await up("trv", "vxlan", ["--ip-masq", "--iptables-resync", "1"]);
      await dropForward(lab);
      const [h1, h2] = [host(lab, 1), host(lab, 2)];
      expect(await ping(h1, h2.containerIP!)).toBe(true);
      expect(await ping(h2, h1.containerIP!)).toBe(true);
    },
    T,
  );

  test(
    "iptables-save shows flanneld's rules byte for byte",
    async () => {
      const h1 = host(lab, 1);
      const P = subnetOf(h1);
      expect(ours(await sh(h1.netns, ["iptables-save", "-t", "nat"]))).toEqual([
        ":FLANNEL-POSTRTG - [0:0]",
        '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
        '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
        `-A FLANNEL-POSTRTG -s ${P} -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j RETURN`,
        `-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d ${P} -m comment --comment "flanneld masq" -j RETURN`,
        `-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d ${P} -m comment --comment "flanneld masq" -j RETURN`,
        '-A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
        '-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
      ]);
      expect(ours(await sh(h1.netns, ["iptables-save", "-t", "filter"]))).toEqual([
        ":FLANNEL-FWD - [0:0]",
        '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
        '-A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
        '-A FLANNEL-FWD -d 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
      ]);
      expect(await sh(h1.netns, ["cat", labState(lab).hosts[0]!.subnetFile])).toContain("FLANNEL_IPMASQ=true");
    },
    T,
  );

  test(
    "a container reaches the outside namespace (masqueraded); pod-to-pod keeps the pod source address",
    async () => {
      await masqueradeChecks(lab);
    },
    T,
  );

  test(
    "a flushed chain comes back (on the change event) and is counted in /metrics",
    async () => {
      const [h1, h2] = [host(lab, 1), host(lab, 2)];
      await sh(h1.netns, ["iptables", "-F", "FLANNEL-FWD"]);
      await sh(h1.netns, ["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"]);
      // --iptables-resync 1: back within a few periods on a loaded machine.
      await waitUntil("FLANNEL-FWD and FLANNEL-POSTRTG are refilled", 10_000, async () => {
        const all = await sh(h1.netns, ["iptables-save"]);
        return ours(all).length === 12;
      });
      // Counted once the fix has been read back, a moment after the rules are visible again.
      await waitUntil("the repairs counted", 5000, async () => (await metric(h1, "flannel_bin_rules_repaired_total")) >= 8);
      expect(await metric(h1, "flannel_bin_rules_repaired_total")).toBe(8);
      expect(await ping(h1, h2.containerIP!)).toBe(true);
      expect(await ping(h1, OUTSIDE_IP)).toBe(true);
      const log = require("node:fs").readFileSync(labState(lab).hosts[0]!.logFile, "utf8") as string;
      // One check per burst of changes: the two flushes are one or two bursts, never one line per rule.
      expect(log.match(/traffic rules repaired/g)?.length).toBeGreaterThanOrEqual(1);
      expect(log.match(/traffic rules repaired/g)?.length).toBeLessThanOrEqual(2);
    },
    T,
  );
  test(
    "the rules stay in place when the agent stops, so traffic keeps flowing; a restart changes nothing",
    async () => {
      const [h1, h2] = [host(lab, 1), host(lab, 2)];
      const before = await sh(h1.netns, ["iptables-save"]);
      await labStopHost(lab, h1.netns);
      expect(ours(await sh(h1.netns, ["iptables-save"]))).toEqual(ours(before));
      expect(await ping(h2, h1.containerIP!)).toBe(true);
      await labStartHost(lab, h1.netns);
      expect(ours(await sh(h1.netns, ["iptables-save"]))).toEqual(ours(before));
      expect(await ping(h1, h2.containerIP!)).toBe(true);
    },
    T,
  );
});

describe("iptables mode, host-gw, default flags (forward rules, no masquerade)", () => {
  let lab: { name: string };
  test(
    "FORWARD DROP: containers ping across hosts; no masquerade, so the outside cannot answer them",
    async () => {
      lab = await up("trh", "host-gw", ["--iptables-resync", "1"]);
      await dropForward(lab);
      const [h1, h2] = [host(lab, 1), host(lab, 2)];
      expect(await ping(h1, h2.containerIP!)).toBe(true);
      expect(await ping(h2, h1.containerIP!)).toBe(true);
      expect(await ping(h1, OUTSIDE_IP)).toBe(false);
      expect(ours(await sh(h1.netns, ["iptables-save", "-t", "nat"]))).toEqual([]);
    },
    T,
  );

  test(
    "--iptables-forward-rules=false and no --ip-masq: no rules at all (the earlier ones removed), and DROP now cuts containers off",
    async () => {
      updateLabState(lab, (s) => s.agentArgs.push("--iptables-forward-rules=false"));
      for (const h of labState(lab).hosts) {
        await labStopHost(lab, h.netns);
        await labStartHost(lab, h.netns);
      }
      const [h1, h2] = [host(lab, 1), host(lab, 2)];
      for (const h of [h1, h2]) {
        expect(ours(await sh(h.netns, ["iptables-save"]))).toEqual([]);
        expect(await sh(h.netns, ["nft", "list", "tables"])).not.toContain("flannel");
      }
      expect(await ping(h1, h2.containerIP!)).toBe(false);
    },
    T,
  );
});

describe('nftables mode ("EnableNFTables": true), vxlan, --ip-masq', () => {
  let lab: { name: string };
  test(
    "switching from iptables: our iptables chains go, table ip flannel-ipv4 comes with flanneld's rules; masquerade works",
    async () => {
      lab = await up("trn", "vxlan", ["--ip-masq", "--iptables-resync", "1"]);
      const s = labState(lab);
      await execIn(
        s.underlay,
        [
          s.binary,
          "config",
          "put",
          JSON.stringify({ Network: s.network, EnableNFTables: true, Backend: { Type: "vxlan" } }),
          ...s.storeFlags,
        ],
        { timeoutMs: 15_000 },
      );
      for (const h of s.hosts) {
        await labStopHost(lab, h.netns);
        await labStartHost(lab, h.netns);
      }
      const [h1, h2] = [host(lab, 1), host(lab, 2)];
      const P = subnetOf(h1);
      expect(ours(await sh(h1.netns, ["iptables-save"]))).toEqual([]);
      const listed = await sh(h1.netns, ["nft", "list", "table", "ip", "flannel-ipv4"]);
      for (const line of [
        "type nat hook postrouting priority srcnat; policy accept;",
        "meta mark 0x00004000 return",
        `ip saddr ${P} ip daddr 10.5.0.0/16 return`,
        `ip saddr 10.5.0.0/16 ip daddr ${P} return`,
        `ip saddr != ${P} ip daddr 10.5.0.0/16 return`,
        "ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random",
        "type filter hook forward priority filter; policy accept;",
        "ip saddr 10.5.0.0/16 accept",
        "ip daddr 10.5.0.0/16 accept",
      ])
        expect(listed).toContain(line);
      // No FORWARD DROP here: an accept in our table cannot override a drop in another base chain (nftables semantics,
      // flanneld's nftables mode has the same limit; README "Traffic rules").
      expect(await ping(h2, h1.containerIP!)).toBe(true);
      await masqueradeChecks(lab);
    },
    T,
  );

  test(
    "a flushed chain comes back within the resync period",
    async () => {
      const [h1, h2] = [host(lab, 1), host(lab, 2)];
      await sh(h1.netns, ["nft", "flush", "chain", "ip", "flannel-ipv4", "forward"]);
      await waitUntil("chain forward is refilled", 10_000, async () =>
        (await sh(h1.netns, ["nft", "list", "chain", "ip", "flannel-ipv4", "forward"])).includes("ip daddr 10.5.0.0/16 accept"),
      );
      // Counted once the fix has been read back, a moment after the rules are visible again.
      await waitUntil("the repairs counted", 5000, async () => (await metric(h1, "flannel_bin_rules_repaired_total")) >= 2);
      expect(await metric(h1, "flannel_bin_rules_repaired_total")).toBe(2);
      expect(await ping(h1, h2.containerIP!)).toBe(true);
    },
    T,
  );
});
