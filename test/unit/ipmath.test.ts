import { describe, expect, test } from "bun:test";
import {
  IPParseError,
  bits,
  containsIP,
  containsNet,
  formatCIDR,
  formatIP,
  ipString,
  isAligned,
  lastIP,
  mask,
  netEqual,
  netSize,
  nextSubnet,
  overlaps,
  parseCIDR,
  parseIP,
  parseIPv4,
  tryParseCIDR,
} from "../../src/ipmath.ts";

const net = (s: string) => parseCIDR(s);

describe("parseIP / formatIP: IPv4", () => {
  const valid: [string, bigint][] = [
    ["0.0.0.0", 0n],
    ["10.5.0.1", 0x0a050001n],
    ["192.168.64.3", 0xc0a84003n],
    ["255.255.255.255", 0xffffffffn],
    ["1.0.0.0", 0x01000000n],
  ];
  for (const [s, v] of valid) {
    test(`${s} round-trips`, () => {
      expect(parseIP(s)).toEqual({ family: 4, value: v });
      expect(parseIPv4(s)).toBe(v);
      expect(formatIP(v, 4)).toBe(s);
      expect(ipString({ family: 4, value: v })).toBe(s);
    });
  }
  const invalid = [
    "010.1.1.1", // leading zero (octal in some parsers)
    "1.1.1.01",
    "00.1.1.1",
    "256.1.1.1",
    "1.1.1.256",
    "1.1.1",
    "1.1.1.1.1",
    "1..1.1",
    "1.1.1.1.",
    "",
    " 1.1.1.1",
    "1.1.1.1 ",
    "+1.1.1.1",
    "-1.1.1.1",
    "1.1.1.a",
    "0x1.1.1.1",
    "1e1.1.1.1",
    "1000.1.1.1",
    "1.1.1.1/24",
  ];
  for (const s of invalid)
    test(`rejects ${JSON.stringify(s)}`, () => {
      expect(parseIP(s)).toBeNull();
      expect(parseIPv4(s)).toBeNull();
    });
  test("parseIPv4 rejects IPv6", () => expect(parseIPv4("::1")).toBeNull());
  test("non-string input", () => expect(parseIP(42 as unknown as string)).toBeNull());
});

describe("parseIP / formatIP: IPv6 (RFC 5952 canonical output)", () => {
  // [input, canonical]
  const cases: [string, string][] = [
    ["::", "::"],
    ["::1", "::1"],
    ["1::", "1::"],
    ["2001:db8::1", "2001:db8::1"],
    ["2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1"],
    ["fc00:0:0:34::", "fc00:0:0:34::"],
    ["fc00:0000:0000:0034:0000:0000:0000:0000", "fc00:0:0:34::"], // longest run wins (4 > 2)
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"], // a single zero group is not compressed
    ["2001:db8::1:1:1:1:1", "2001:db8:0:1:1:1:1:1"],
    ["1:0:0:2:0:0:3:4", "1::2:0:0:3:4"], // tie: the first run is compressed
    ["1:0:0:2:0:0:0:4", "1:0:0:2::4"], // longer later run wins
    ["0:0:1:0:0:0:0:0", "0:0:1::"],
    ["1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"],
    ["1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"], // :: may stand for a single group on input
    ["::2:3:4:5:6:7:8", "0:2:3:4:5:6:7:8"],
    ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
    ["fe80::abcd:ef01", "fe80::abcd:ef01"],
    ["FD00::3", "fd00::3"],
    // embedded IPv4 in the last 32 bits
    ["::ffff:1.2.3.4", "::ffff:102:304"],
    ["::1.2.3.4", "::102:304"],
    ["64:ff9b::192.0.2.33", "64:ff9b::c000:221"],
    ["1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304"],
  ];
  for (const [input, canonical] of cases) {
    test(`${input} -> ${canonical}`, () => {
      const ip = parseIP(input);
      expect(ip?.family).toBe(6);
      expect(formatIP(ip!.value, 6)).toBe(canonical);
      expect(parseIP(canonical)).toEqual(ip); // canonical form parses back to the same value
    });
  }
  test("embedded IPv4 value", () => {
    expect(parseIP("::ffff:10.5.0.1")).toEqual({ family: 6, value: 0xffff0a050001n });
    expect(parseIP("::ffff:10.5.0.1")).toEqual(parseIP("::ffff:a05:1"));
  });
  test("values", () => {
    expect(parseIP("::")!.value).toBe(0n);
    expect(parseIP("::1")!.value).toBe(1n);
    expect(parseIP("1::")!.value).toBe(1n << 112n);
    expect(parseIP("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")!.value).toBe((1n << 128n) - 1n);
  });
  const invalid = [
    ":::",
    "1:::2",
    "1::2::3",
    ":1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:",
    "1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7:8::",
    "::1:2:3:4:5:6:7:8",
    "12345::",
    "g::",
    "fe80::1%eth0",
    "::ffff:1.2.3",
    "::ffff:256.1.1.1",
    "::ffff:01.2.3.4",
    "::1.2.3.4:5",
    "1.2.3.4::",
    "1:2:3:4:5:6:7:1.2.3.4",
    ":",
    "[::1]",
    "::/64",
  ];
  for (const s of invalid) test(`rejects ${JSON.stringify(s)}`, () => expect(parseIP(s)).toBeNull());
});

describe("parseCIDR / tryParseCIDR", () => {
  const valid: [string, string, number][] = [
    ["10.5.0.0/16", "10.5.0.0/16", 16],
    ["10.5.1.3/16", "10.5.0.0/16", 16], // host bits masked, like Go's net.ParseCIDR
    ["10.5.52.1/24", "10.5.52.0/24", 24],
    ["1.2.3.4/0", "0.0.0.0/0", 0],
    ["1.2.3.4/32", "1.2.3.4/32", 32],
    ["255.255.255.255/1", "128.0.0.0/1", 1],
    ["fc00::/48", "fc00::/48", 48],
    ["fc00::1234/48", "fc00::/48", 48],
    ["fc00:0:0:34::1/64", "fc00:0:0:34::/64", 64],
    ["::1/128", "::1/128", 128],
    ["ffff::1/0", "::/0", 0],
    ["2001:db8:1:2:3:4:5:6/127", "2001:db8:1:2:3:4:5:6/127", 127],
  ];
  for (const [input, want, prefix] of valid) {
    test(`${input} -> ${want}`, () => {
      const n = parseCIDR(input);
      expect(formatCIDR(n)).toBe(want);
      expect(n.prefix).toBe(prefix);
      expect(tryParseCIDR(input)).toEqual(n);
    });
  }
  const invalid = [
    "10.5.0.0",
    "10.5.0.0/",
    "10.5.0.0/33",
    "10.5.0.0/-1",
    "10.5.0.0/08",
    "10.5.0.0/+8",
    "10.5.0.0/8/8",
    "10.5.0.0/ 8",
    "10.5.0.0/1000",
    "010.5.0.0/16",
    "256.0.0.0/8",
    "fc00::/129",
    "fc00::/064",
    "/16",
    "",
    "fc00::%eth0/64",
  ];
  for (const s of invalid) {
    test(`rejects ${JSON.stringify(s)}`, () => {
      expect(tryParseCIDR(s)).toBeNull();
      expect(() => parseCIDR(s)).toThrow(IPParseError);
      expect(() => parseCIDR(s)).toThrow(`invalid CIDR address: ${s}`);
    });
  }
  test("non-string input", () => expect(tryParseCIDR(undefined as unknown as string)).toBeNull());
});

describe("mask, sizes and alignment", () => {
  test("mask", () => {
    expect(mask(0, 4)).toBe(0n);
    expect(mask(8, 4)).toBe(0xff000000n);
    expect(mask(24, 4)).toBe(0xffffff00n);
    expect(mask(32, 4)).toBe(0xffffffffn);
    expect(mask(0, 6)).toBe(0n);
    expect(mask(64, 6)).toBe(0xffffffffffffffffn << 64n);
    expect(mask(128, 6)).toBe((1n << 128n) - 1n);
    expect(mask(1, 6)).toBe(1n << 127n);
  });
  test("bits, netSize, lastIP", () => {
    expect(bits(4)).toBe(32);
    expect(bits(6)).toBe(128);
    expect(netSize(net("10.5.0.0/16"))).toBe(65536n);
    expect(netSize(net("0.0.0.0/0"))).toBe(1n << 32n);
    expect(netSize(net("1.2.3.4/32"))).toBe(1n);
    expect(netSize(net("fc00::/64"))).toBe(1n << 64n);
    expect(formatIP(lastIP(net("10.5.0.0/16")), 4)).toBe("10.5.255.255");
    expect(formatIP(lastIP(net("0.0.0.0/0")), 4)).toBe("255.255.255.255");
    expect(formatIP(lastIP(net("fc00::/48")), 6)).toBe("fc00::ffff:ffff:ffff:ffff:ffff"); // the 2-group zero run is compressed
  });
  test("isAligned", () => {
    expect(isAligned(parseIPv4("10.5.1.0")!, 24, 4)).toBe(true);
    expect(isAligned(parseIPv4("10.5.1.1")!, 24, 4)).toBe(false);
    expect(isAligned(parseIPv4("10.5.1.128")!, 25, 4)).toBe(true);
    expect(isAligned(parseIPv4("10.5.1.128")!, 24, 4)).toBe(false);
    expect(isAligned(parseIPv4("10.5.1.1")!, 32, 4)).toBe(true);
    expect(isAligned(0n, 0, 4)).toBe(true);
    expect(isAligned(1n, 0, 4)).toBe(false);
    expect(isAligned(parseIP("fc00:0:0:1::")!.value, 64, 6)).toBe(true);
    expect(isAligned(parseIP("fc00:0:0:1::1")!.value, 64, 6)).toBe(false);
    expect(isAligned(parseIP("fc00:0:0:1:8000::")!.value, 64, 6)).toBe(false);
    expect(isAligned(parseIP("fc00:0:0:1:8000::")!.value, 65, 6)).toBe(true);
  });
});

describe("contains and overlaps", () => {
  test("containsIP", () => {
    const n = net("10.5.0.0/16");
    expect(containsIP(n, parseIP("10.5.0.0")!)).toBe(true);
    expect(containsIP(n, parseIP("10.5.255.255")!)).toBe(true);
    expect(containsIP(n, parseIP("10.6.0.0")!)).toBe(false);
    expect(containsIP(n, parseIP("10.4.255.255")!)).toBe(false);
    expect(containsIP(n, parseIPv4("10.5.7.7")!)).toBe(true); // bigint form
    expect(containsIP(net("0.0.0.0/0"), parseIP("255.255.255.255")!)).toBe(true);
    expect(containsIP(net("fc00::/48"), parseIP("fc00:0:0:ffff::1")!)).toBe(true);
    expect(containsIP(net("fc00::/48"), parseIP("fc00:1::")!)).toBe(false);
  });
  test("containsIP: family mismatch is never contained", () => {
    expect(containsIP(net("::/0"), parseIP("10.0.0.1")!)).toBe(false);
    expect(containsIP(net("0.0.0.0/0"), parseIP("::1")!)).toBe(false);
  });
  test("containsNet", () => {
    expect(containsNet(net("10.5.0.0/16"), net("10.5.52.0/24"))).toBe(true);
    expect(containsNet(net("10.5.0.0/16"), net("10.5.0.0/16"))).toBe(true);
    expect(containsNet(net("10.5.52.0/24"), net("10.5.0.0/16"))).toBe(false);
    expect(containsNet(net("10.5.0.0/16"), net("10.6.0.0/24"))).toBe(false);
    expect(containsNet(net("::/0"), net("0.0.0.0/8"))).toBe(false);
    expect(containsNet(net("fc00::/48"), net("fc00:0:0:34::/64"))).toBe(true);
  });
  const overlapCases: [string, string, boolean][] = [
    ["10.5.0.0/16", "10.5.52.0/24", true], // equal under the shorter mask
    ["10.5.52.0/24", "10.5.0.0/16", true],
    ["10.5.52.0/24", "10.5.52.0/24", true],
    ["10.5.52.0/24", "10.5.53.0/24", false],
    ["10.5.52.0/23", "10.5.53.0/24", true],
    ["10.5.52.0/24", "10.5.52.128/25", true],
    ["10.5.52.0/25", "10.5.52.128/25", false],
    ["0.0.0.0/0", "192.168.1.0/24", true],
    ["fc00::/48", "fc00:0:0:34::/64", true],
    ["fc00:0:0:34::/64", "fc00:0:0:35::/64", false],
    ["::/0", "0.0.0.0/0", false], // different families never overlap
  ];
  for (const [a, b, want] of overlapCases) {
    test(`overlaps(${a}, ${b}) = ${want}`, () => {
      expect(overlaps(net(a), net(b))).toBe(want);
      expect(overlaps(net(b), net(a))).toBe(want);
    });
  }
  test("netEqual", () => {
    expect(netEqual(net("10.5.1.3/16"), net("10.5.0.0/16"))).toBe(true);
    expect(netEqual(net("10.5.0.0/16"), net("10.5.0.0/17"))).toBe(false);
    expect(netEqual(net("10.5.0.0/16"), net("10.6.0.0/16"))).toBe(false);
    expect(netEqual(net("::/0"), net("0.0.0.0/0"))).toBe(false);
  });
});

describe("nextSubnet", () => {
  const cases: [string, string | null][] = [
    ["10.5.1.0/24", "10.5.2.0/24"],
    ["10.5.255.0/24", "10.6.0.0/24"],
    ["10.5.1.252/30", "10.5.2.0/30"],
    ["1.2.3.4/32", "1.2.3.5/32"],
    ["255.255.255.0/24", null], // end of the IPv4 address space
    ["255.255.255.255/32", null],
    ["0.0.0.0/0", null],
    ["128.0.0.0/1", null],
    ["0.0.0.0/1", "128.0.0.0/1"],
    ["fc00:0:0:34::/64", "fc00:0:0:35::/64"],
    ["fc00:0:0:ffff::/64", "fc00:0:1::/64"],
    ["ffff:ffff:ffff:ffff::/64", null], // end of the IPv6 address space
    ["::/0", null],
    ["::/128", "::1/128"],
  ];
  for (const [input, want] of cases) {
    test(`${input} -> ${want}`, () => {
      const n = nextSubnet(net(input));
      expect(n === null ? null : formatCIDR(n)).toBe(want);
    });
  }
  test("keeps family and prefix", () => {
    expect(nextSubnet(net("10.5.1.0/24"))).toEqual({ family: 4, ip: 0x0a050200n, prefix: 24 });
  });
});
