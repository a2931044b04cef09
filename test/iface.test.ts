import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { candidateAddrs, chooseExternalInterface, IfaceError, parseIpAddr, selectInterface } from "../src/iface.ts";
import { formatCIDR } from "../src/ipmath.ts";
import { testName } from "./helpers/binary.ts";

const inet = (local: string, prefixlen: number, extra: Record<string, unknown> = {}) => ({
  family: "inet",
  local,
  prefixlen,
  scope: "global",
  valid_life_time: 4294967295,
  preferred_life_time: 4294967295,
  ...extra,
});
const link = (ifindex: number, ifname: string, mtu: number, addr_info: unknown[]) => ({
  ifindex,
  ifname,
  flags: ["UP"],
  mtu,
  operstate: "UP",
  link_type: "ether",
  addr_info,
});

// Shaped like real `ip -json addr show` output.
const ADDRS = [
  link(1, "lo", 65536, [inet("127.0.0.1", 8, { scope: "host" }), { family: "inet6", local: "::1", prefixlen: 128, scope: "host" }]),
  link(2, "eth0", 1500, [
    inet("169.254.10.10", 16, { scope: "link" }),
    inet("192.0.2.50", 24, { dynamic: true, valid_life_time: 3000, preferred_life_time: 3000 }),
    inet("192.0.2.2", 24),
    { family: "inet6", local: "fd00::2", prefixlen: 64, scope: "global" },
  ]),
  link(3, "eth1", 9000, [inet("10.0.0.5", 24), inet("10.9.0.5", 16)]),
  link(4, "docker0", 1500, [inet("172.17.0.1", 16)]),
  link(5, "wg0", 1420, [{ family: "inet6", local: "fd01::1", prefixlen: 64, scope: "global" }]),
  link(6, "zero0", 0, [inet("198.51.100.1", 24)]),
  link(7, "ll0", 1500, [inet("169.254.3.3", 16, { scope: "link" }), inet("203.0.113.4", 24, { preferred_life_time: 0 })]),
];
const ROUTES = [
  { dst: "default", gateway: "192.0.2.1", dev: "eth0", flags: [] },
  { dst: "192.0.2.0/24", dev: "eth0", protocol: "kernel", scope: "link", prefsrc: "192.0.2.2", flags: [] },
];

describe("selectInterface (pure)", () => {
  test("default-route interface; candidates: global before link-local, permanent before dynamic", () => {
    const s = selectInterface(ADDRS, ROUTES, {});
    expect(s.iface.name).toBe("eth0");
    expect(s.iface.index).toBe(2);
    expect(s.iface.mtu).toBe(1500);
    expect(s.iface.ipv4).toBe("192.0.2.2");
    expect(s.publicIP).toBe("192.0.2.2");
    expect(s.iface.ipv4Nets.map(formatCIDR)).toEqual(["169.254.0.0/16", "192.0.2.0/24"]);
  });

  test("candidate order and exclusions", () => {
    const links = parseIpAddr(ADDRS);
    expect(candidateAddrs(links.find((l) => l.ifname === "eth0")!)).toEqual(["192.0.2.2", "192.0.2.50", "169.254.10.10"]);
    expect(candidateAddrs(links.find((l) => l.ifname === "lo")!)).toEqual([]);
    // Deprecated (preferred_lft 0) is skipped; link-local is used when nothing else is left.
    expect(candidateAddrs(links.find((l) => l.ifname === "ll0")!)).toEqual(["169.254.3.3"]);
  });

  test("no default route", () => {
    expect(() => selectInterface(ADDRS, [], {})).toThrow(
      "Failed to find any valid interface to use: failed to get default interface: Unable to find default route",
    );
    // An unreachable default has no device.
    expect(() => selectInterface(ADDRS, [{ dst: "default", type: "unreachable", flags: [] }], {})).toThrow(/Unable to find default route/);
  });

  test("--public-ip picks the interface owning it, and becomes the public IP", () => {
    const s = selectInterface(ADDRS, ROUTES, { publicIP: "10.0.0.5" });
    expect(s.iface.name).toBe("eth1");
    expect(s.iface.ipv4).toBe("10.0.0.5");
    expect(s.publicIP).toBe("10.0.0.5");
    expect(s.iface.ipv4Nets.map(formatCIDR)).toEqual(["10.0.0.0/24", "10.9.0.0/16"]);
    expect(() => selectInterface(ADDRS, ROUTES, { publicIP: "203.0.113.99" })).toThrow(/^Failed to find any valid interface to use: /);
    expect(() => selectInterface(ADDRS, ROUTES, { publicIP: "not-an-ip" })).toThrow("invalid public IP address: not-an-ip");
    expect(() => selectInterface(ADDRS, ROUTES, { publicIP: "fd00::2" })).toThrow(/invalid public IP/);
  });

  test("--iface by name or IP, in order; --public-ip still overrides the public IP (NAT)", () => {
    expect(selectInterface(ADDRS, ROUTES, { iface: ["eth1"] }).iface.ipv4).toBe("10.0.0.5");
    const byIP = selectInterface(ADDRS, ROUTES, { iface: ["10.9.0.5"] });
    expect([byIP.iface.name, byIP.iface.ipv4, byIP.publicIP]).toEqual(["eth1", "10.9.0.5", "10.9.0.5"]);
    const s = selectInterface(ADDRS, ROUTES, { iface: ["nope0", "wg0", "docker0", "eth1"], publicIP: "203.0.113.7" });
    expect([s.iface.name, s.iface.ipv4, s.publicIP]).toEqual(["docker0", "172.17.0.1", "203.0.113.7"]);
    expect(s.notes).toHaveLength(2);
    expect(s.notes[0]).toMatch(/nope0/);
    expect(s.notes[1]).toMatch(/failed to find IPv4 address for interface wg0/);
  });

  test("--iface-regex: addresses first, then names; only after --iface entries fail", () => {
    expect(selectInterface(ADDRS, ROUTES, { ifaceRegex: ["^10\\.9\\."] }).iface.ipv4).toBe("10.9.0.5");
    // "eth" matches no address, so pass 2 matches names in kernel order.
    expect(selectInterface(ADDRS, ROUTES, { ifaceRegex: ["eth"] }).iface.name).toBe("eth0");
    // Addresses match before names: 127.0.0.1 on lo is not a candidate, so 172.17.0.1 on docker0 is the first match.
    expect(selectInterface(ADDRS, ROUTES, { ifaceRegex: ["\\.1$"] }).iface.name).toBe("docker0");
    expect(selectInterface(ADDRS, ROUTES, { iface: ["missing"], ifaceRegex: ["docker"] }).iface.name).toBe("docker0");
    expect(selectInterface(ADDRS, ROUTES, { iface: ["eth1"], ifaceRegex: ["docker"] }).iface.name).toBe("eth1");
  });

  test("no match: flannel's message, with why each entry failed", () => {
    try {
      selectInterface(ADDRS, ROUTES, { iface: ["nope0"], ifaceRegex: ["^xyz", "(["] });
      throw new Error("expected a throw");
    } catch (e) {
      expect(e).toBeInstanceOf(IfaceError);
      expect((e as IfaceError).message).toBe("Failed to find interface to use that matches the interfaces and/or regexes provided");
      expect((e as IfaceError).notes).toHaveLength(3);
      expect((e as IfaceError).notes[2]).toMatch(/invalid interface regex/);
    }
  });

  test("--iface-can-reach: the route's device and preferred source, only after --iface and regexes fail", () => {
    const get = [{ dst: "10.0.0.9", dev: "eth1", prefsrc: "10.9.0.5", flags: [] }];
    const s = selectInterface(ADDRS, ROUTES, { ifaceCanReach: "10.0.0.9" }, get);
    expect(s.iface.name).toBe("eth1");
    expect(s.publicIP).toBe("10.9.0.5");
    // No preferred source: the device's first address.
    expect(selectInterface(ADDRS, ROUTES, { ifaceCanReach: "10.0.0.9" }, [{ dst: "10.0.0.9", dev: "eth1" }]).publicIP).toBe("10.0.0.5");
    // --iface first; can-reach only when it fails.
    expect(selectInterface(ADDRS, ROUTES, { iface: ["docker0"], ifaceCanReach: "10.0.0.9" }, get).iface.name).toBe("docker0");
    expect(selectInterface(ADDRS, ROUTES, { iface: ["nope0"], ifaceCanReach: "10.0.0.9" }, get).iface.name).toBe("eth1");
    // No route: flannel's "no match" message with the reason.
    try {
      selectInterface(ADDRS, ROUTES, { ifaceCanReach: "10.0.0.9" }, []);
      throw new Error("expected a throw");
    } catch (e) {
      expect((e as IfaceError).message).toBe("Failed to find interface to use that matches the interfaces and/or regexes provided");
      expect((e as IfaceError).notes[0]).toMatch(/reaching 10\.0\.0\.9: no route/);
    }
    expect(() => selectInterface(ADDRS, ROUTES, { ifaceCanReach: "eth0" }, get)).toThrow("invalid --iface-can-reach address: eth0");
  });

  test("interface MTU must be non-zero", () => {
    expect(() => selectInterface(ADDRS, ROUTES, { iface: ["zero0"] })).toThrow("failed to determine MTU for 198.51.100.1 interface");
  });

  test("malformed ip output", () => {
    expect(() => selectInterface({}, ROUTES, {})).toThrow(IfaceError);
    expect(() => selectInterface(ADDRS, "x", {})).toThrow(IfaceError);
    // Junk entries are skipped, not trusted.
    const junk = [
      null,
      5,
      { ifname: "x" },
      link(9, "eth9", 1500, [inet("1.2.3.4 dev lo", 24), inet("10.1.1.1", 99), inet("10.2.2.2", 24)]),
    ];
    const s = selectInterface(junk, [{ dst: "default", dev: "eth9" }], {});
    expect(s.iface.ipv4).toBe("10.2.2.2");
    expect(s.iface.ipv4Nets.map(formatCIDR)).toEqual(["10.2.2.0/24"]);
  });
});

// Real kernel: a throw-away network namespace with a veth interface (the dummy module may be missing), an
// address and a default route.
describe("chooseExternalInterface (netns)", () => {
  const ns = testName(`fbtest-iface-${process.pid}`);
  const run = async (...args: string[]) => {
    const p = Bun.spawn(["ip", ...args], { stdout: "pipe", stderr: "pipe" });
    const [code, err] = await Promise.all([p.exited, new Response(p.stderr).text()]);
    if (code !== 0) throw new Error(`ip ${args.join(" ")}: ${err.trim()}`);
  };

  beforeAll(async () => {
    await run("netns", "add", ns);
    await run("-n", ns, "link", "add", "ext0", "mtu", "1400", "type", "veth", "peer", "name", "ext0p");
    await run("-n", ns, "addr", "add", "10.77.0.2/24", "dev", "ext0");
    await run("-n", ns, "addr", "add", "10.78.1.2/16", "dev", "ext0");
    await run("-n", ns, "link", "set", "ext0", "up");
    await run("-n", ns, "link", "set", "ext0p", "up");
    await run("-n", ns, "link", "set", "lo", "up");
    await run("-n", ns, "route", "add", "default", "via", "10.77.0.1", "dev", "ext0");
  });
  afterAll(async () => {
    await run("netns", "del", ns).catch(() => {});
  });

  test("picks the default-route interface and its first address", async () => {
    const s = await chooseExternalInterface({ netns: ns });
    expect(s.iface.name).toBe("ext0");
    expect(s.iface.mtu).toBe(1400);
    expect(s.iface.index).toBeGreaterThan(1);
    expect(s.iface.ipv4).toBe("10.77.0.2");
    expect(s.publicIP).toBe("10.77.0.2");
    expect(s.iface.ipv4Nets.map(formatCIDR)).toEqual(["10.77.0.0/24", "10.78.0.0/16"]);
  });

  test("--iface by IP and --iface-regex in the namespace", async () => {
    expect((await chooseExternalInterface({ netns: ns, iface: ["10.78.1.2"] })).iface.ipv4).toBe("10.78.1.2");
    expect((await chooseExternalInterface({ netns: ns, ifaceRegex: ["^ext"] })).iface.name).toBe("ext0");
    await expect(chooseExternalInterface({ netns: ns, iface: ["lo"] })).rejects.toThrow(/matches the interfaces/);
  });

  test("--iface-can-reach asks the kernel for the route (ip route get)", async () => {
    const s = await chooseExternalInterface({ netns: ns, ifaceCanReach: "10.78.200.1" });
    expect(s.iface.name).toBe("ext0");
    expect(s.publicIP).toBe("10.78.1.2"); // the source the kernel picks for 10.78.0.0/16
  });
});
