import { describe, expect, test } from "bun:test";
import {
  ConfigError,
  DEFAULT_CONFIG_EXAMPLE,
  type NetworkConfig,
  formatNetworkConfigSummary,
  parseNetworkConfig,
} from "../../src/config.ts";
import { formatCIDR, formatIP } from "../../src/ipmath.ts";

/** The parts of a config that tests compare, in readable form. */
function view(c: NetworkConfig) {
  return {
    enableIPv4: c.enableIPv4,
    enableIPv6: c.enableIPv6,
    enableNFTables: c.enableNFTables,
    network: c.network ? formatCIDR(c.network) : null,
    subnetLen: c.subnetLen,
    subnetMin: formatIP(c.subnetMin, 4),
    subnetMax: formatIP(c.subnetMax, 4),
    ipv6Network: c.ipv6Network ? formatCIDR(c.ipv6Network) : null,
    ipv6SubnetLen: c.ipv6SubnetLen,
    ipv6SubnetMin: formatIP(c.ipv6SubnetMin, 6),
    ipv6SubnetMax: formatIP(c.ipv6SubnetMax, 6),
    backend: c.backend.type,
  };
}

const cfg = (o: Record<string, unknown>): string => JSON.stringify(o);
const V6 = { Network: "10.5.0.0/16", EnableIPv6: true };

describe("parseNetworkConfig: valid configs", () => {
  const cases: [string, string, Partial<ReturnType<typeof view>>][] = [
    [
      "defaults for a /16",
      cfg({ Network: "10.5.0.0/16" }),
      {
        enableIPv4: true,
        enableIPv6: false,
        enableNFTables: false,
        network: "10.5.0.0/16",
        subnetLen: 24,
        subnetMin: "10.5.1.0",
        subnetMax: "10.5.255.0",
        backend: "vxlan",
      },
    ],
    ["host bits masked", cfg({ Network: "10.5.1.3/16" }), { network: "10.5.0.0/16", subnetMin: "10.5.1.0" }],
    ["/22 still gets /24", cfg({ Network: "10.0.0.0/22" }), { subnetLen: 24, subnetMin: "10.0.1.0", subnetMax: "10.0.3.0" }],
    ["/23 gets /25", cfg({ Network: "10.0.0.0/23" }), { subnetLen: 25 }],
    ["/24 gets /26", cfg({ Network: "192.168.7.0/24" }), { subnetLen: 26, subnetMin: "192.168.7.64", subnetMax: "192.168.7.192" }],
    ["/28 gets /30", cfg({ Network: "10.0.0.16/28" }), { subnetLen: 30, subnetMin: "10.0.0.20", subnetMax: "10.0.0.28" }],
    ["/8", cfg({ Network: "10.0.0.0/8" }), { subnetLen: 24, subnetMin: "10.0.1.0", subnetMax: "10.255.255.0" }],
    ["top of unicast space", cfg({ Network: "223.255.0.0/16" }), { subnetMax: "223.255.255.0" }],
    [
      "explicit SubnetLen",
      cfg({ Network: "10.5.0.0/16", SubnetLen: 20 }),
      { subnetLen: 20, subnetMin: "10.5.16.0", subnetMax: "10.5.240.0" },
    ],
    ["SubnetLen 30", cfg({ Network: "10.5.0.0/16", SubnetLen: 30 }), { subnetLen: 30, subnetMax: "10.5.255.252" }],
    [
      "SubnetLen = prefix+2",
      cfg({ Network: "10.5.0.0/16", SubnetLen: 18 }),
      { subnetLen: 18, subnetMin: "10.5.64.0", subnetMax: "10.5.192.0" },
    ],
    ["SubnetLen 0 means default", cfg({ Network: "10.5.0.0/16", SubnetLen: 0 }), { subnetLen: 24 }],
    [
      "explicit SubnetMin/Max",
      cfg({ Network: "10.5.0.0/16", SubnetMin: "10.5.10.0", SubnetMax: "10.5.20.0" }),
      { subnetMin: "10.5.10.0", subnetMax: "10.5.20.0" },
    ],
    ["SubnetMin 0.0.0.0 means unset", cfg({ Network: "10.5.0.0/16", SubnetMin: "0.0.0.0" }), { subnetMin: "10.5.1.0" }],
    [
      "SubnetMin = SubnetMax: one subnet",
      cfg({ Network: "10.5.0.0/16", SubnetMin: "10.5.9.0", SubnetMax: "10.5.9.0" }),
      { subnetMin: "10.5.9.0" },
    ],
    ["SubnetMin = network address allowed", cfg({ Network: "10.5.0.0/16", SubnetMin: "10.5.0.0" }), { subnetMin: "10.5.0.0" }],
    [
      "case-insensitive keys",
      '{"network":"10.5.0.0/16","SUBNETLEN":25,"subnetmin":"10.5.0.128","BACKEND":{"tYpE":"host-gw"}}',
      { network: "10.5.0.0/16", subnetLen: 25, subnetMin: "10.5.0.128", backend: "host-gw" },
    ],
    ["Go folds the long s (U+017F) to s", '{"Network":"10.5.0.0/16","\u017fubnetLen":26}', { subnetLen: 26 }],
    [
      "unknown keys ignored",
      cfg({ Network: "10.5.0.0/16", Foo: [1, { x: null }], BackendType: 7, Networks: null }),
      { network: "10.5.0.0/16" },
    ],
    [
      "last duplicate wins in document order",
      '{"Network":"10.1.0.0/16","network":"10.2.0.0/16","Network":"10.3.0.0/16"}',
      { network: "10.3.0.0/16" },
    ],
    [
      "null leaves bool and uint defaults",
      '{"Network":"10.5.0.0/16","EnableIPv4":null,"SubnetLen":null}',
      { enableIPv4: true, subnetLen: 24 },
    ],
    ["EnableNFTables", cfg({ Network: "10.5.0.0/16", EnableNFTables: true }), { enableNFTables: true }],
    [
      "whitespace and nesting",
      ' \n\t{ "Network" : "10.5.0.0/16" , "Backend" : { "Type" : "vxlan" , "VNI" : 4096 } }\r\n',
      { backend: "vxlan" },
    ],
    // IPv6
    [
      "dual stack defaults /48",
      cfg({ ...V6, IPv6Network: "fc00::/48" }),
      { enableIPv6: true, ipv6Network: "fc00::/48", ipv6SubnetLen: 64, ipv6SubnetMin: "fc00:0:0:1::", ipv6SubnetMax: "fc00:0:0:ffff::" },
    ],
    ["IPv6 host bits masked", cfg({ ...V6, IPv6Network: "fc00::1234/48" }), { ipv6Network: "fc00::/48" }],
    ["IPv6 /62 gets /64", cfg({ ...V6, IPv6Network: "fc00::/62" }), { ipv6SubnetLen: 64, ipv6SubnetMax: "fc00:0:0:3::" }],
    ["IPv6 /63 gets /65", cfg({ ...V6, IPv6Network: "fc00::/63" }), { ipv6SubnetLen: 65 }],
    [
      "IPv6 /124 gets /126",
      cfg({ ...V6, IPv6Network: "fc00::/124" }),
      { ipv6SubnetLen: 126, ipv6SubnetMin: "fc00::4", ipv6SubnetMax: "fc00::c" },
    ],
    [
      "IPv6 explicit len/min/max",
      cfg({ ...V6, IPv6Network: "fc00::/48", IPv6SubnetLen: 56, IPv6SubnetMin: "fc00:0:0:200::", IPv6SubnetMax: "fc00:0:0:f00::" }),
      { ipv6SubnetLen: 56, ipv6SubnetMin: "fc00:0:0:200::", ipv6SubnetMax: "fc00:0:0:f00::" },
    ],
    [
      "IPv6SubnetMin null and :: mean unset",
      '{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:5::","ipv6subnetmin":null,"IPv6SubnetMax":"::"}',
      { ipv6SubnetMin: "fc00:0:0:1::", ipv6SubnetMax: "fc00:0:0:ffff::" },
    ],
    [
      "IPv6 only",
      cfg({ EnableIPv4: false, EnableIPv6: true, IPv6Network: "fd00:10::/56" }),
      { enableIPv4: false, network: null, subnetLen: 0, subnetMin: "0.0.0.0", ipv6SubnetLen: 64, ipv6SubnetMin: "fd00:10:0:1::" },
    ],
    [
      "IPv4 disabled: its fields are not checked",
      cfg({ EnableIPv4: false, EnableIPv6: true, IPv6Network: "fc00::/48", SubnetLen: 99 }),
      { subnetLen: 99 },
    ],
    ["IPv6 fields ignored when disabled", cfg({ Network: "10.5.0.0/16", IPv6SubnetLen: 200 }), { enableIPv6: false, ipv6SubnetLen: 200 }],
    // Backend
    ["missing Backend = vxlan (flannel docs, not its udp code default)", cfg({ Network: "10.5.0.0/16" }), { backend: "vxlan" }],
    ["Backend null = missing", '{"Network":"10.5.0.0/16","Backend":null}', { backend: "vxlan" }],
    ["Backend.Type case-insensitive value", cfg({ Network: "10.5.0.0/16", Backend: { Type: "VXLAN" } }), { backend: "vxlan" }],
    ["host-gw", cfg({ Network: "10.5.0.0/16", Backend: { Type: "Host-GW" } }), { backend: "host-gw" }],
  ];
  for (const [name, text, want] of cases) {
    test(name, () => {
      expect(view(parseNetworkConfig(text))).toMatchObject(want);
    });
  }

  test("backend options keep every key, lower-cased, values as JSON", () => {
    const c = parseNetworkConfig(
      '{"Network":"10.5.0.0/16","Backend":{"Type":"VXLAN","VNI":4096,"Port":4789,"DirectRouting":true,"gbp":false,"Nested":{"A":[1,"x"]},"__proto__":1}}',
    );
    expect(c.backend.type).toBe("vxlan");
    expect(c.backend.options).toEqual({
      type: "VXLAN",
      vni: 4096,
      port: 4789,
      directrouting: true,
      gbp: false,
      nested: { A: [1, "x"] },
      ["__proto__"]: 1,
    });
    expect(Object.getPrototypeOf(c.backend.options)).toBe(Object.prototype);
  });

  test("backend options: later duplicate key (any case) wins", () => {
    const c = parseNetworkConfig('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":1,"vni":2}}');
    expect(c.backend.options.vni).toBe(2);
  });

  test("missing Backend gives empty options", () => {
    expect(parseNetworkConfig('{"Network":"10.5.0.0/16"}').backend).toEqual({ type: "vxlan", options: {} });
  });

  test("values are bigint/number typed", () => {
    const c = parseNetworkConfig(DEFAULT_CONFIG_EXAMPLE);
    expect(c.subnetMin).toBe(0x0a050100n);
    expect(c.subnetMax).toBe(0x0a05ff00n);
    expect(c.network).toEqual({ family: 4, ip: 0x0a050000n, prefix: 16 });
    expect(c.ipv6Network).toBeNull();
    expect(c.ipv6SubnetMin).toBe(0n);
  });
});

describe("parseNetworkConfig: errors", () => {
  const NET = { Network: "10.5.0.0/16" };
  // A string is the exact message; a RegExp is used where only part of the message is pinned.
  const cases: [string, string, string | RegExp][] = [
    // §1 IPv4 validation, verbatim
    ["Network missing", "{}", "please define a correct Network parameter in the flannel config"],
    ["top-level null = {}", "null", "please define a correct Network parameter in the flannel config"],
    ["Network 0.0.0.0/0", cfg({ Network: "0.0.0.0/0" }), "please define a correct Network parameter in the flannel config"],
    ["Network 1.2.3.4/0 masks to empty", cfg({ Network: "1.2.3.4/0" }), "please define a correct Network parameter in the flannel config"],
    ["SubnetLen 31", cfg({ ...NET, SubnetLen: 31 }), "SubnetLen must be less than /31"],
    ["SubnetLen 32", cfg({ ...NET, SubnetLen: 32 }), "SubnetLen must be less than /31"],
    ["SubnetLen huge", '{"Network":"10.5.0.0/16","SubnetLen":18446744073709551615}', "SubnetLen must be less than /31"],
    ["SubnetLen < prefix+2", cfg({ ...NET, SubnetLen: 17 }), "network must be able to accommodate at least four subnets"],
    ["SubnetLen < prefix", cfg({ ...NET, SubnetLen: 8 }), "network must be able to accommodate at least four subnets"],
    ["/29 too small", cfg({ Network: "10.0.0.0/29" }), "network is too small. Minimum useful network prefix is /28"],
    ["/32 too small", cfg({ Network: "10.0.0.1/32" }), "network is too small. Minimum useful network prefix is /28"],
    ["/29 with SubnetLen 30", cfg({ Network: "10.0.0.0/29", SubnetLen: 30 }), "network must be able to accommodate at least four subnets"],
    ["SubnetMin outside", cfg({ ...NET, SubnetMin: "10.6.0.0" }), "SubnetMin is not in the range of the Network"],
    ["SubnetMax outside", cfg({ ...NET, SubnetMax: "10.4.255.0" }), "SubnetMax is not in the range of the Network"],
    ["SubnetMin unaligned", cfg({ ...NET, SubnetMin: "10.5.1.1" }), "SubnetMin is not on a SubnetLen boundary: 10.5.1.1"],
    ["SubnetMax unaligned", cfg({ ...NET, SubnetMax: "10.5.255.128" }), "SubnetMax is not on a SubnetLen boundary: 10.5.255.128"],
    [
      "SubnetMin unaligned to explicit len",
      cfg({ ...NET, SubnetLen: 20, SubnetMin: "10.5.1.0" }),
      "SubnetMin is not on a SubnetLen boundary: 10.5.1.0",
    ],
    [
      "range check before alignment",
      cfg({ ...NET, SubnetMin: "10.5.1.1", SubnetMax: "11.0.0.0" }),
      "SubnetMax is not in the range of the Network",
    ],
    ["Network must be IPv4", cfg({ Network: "fc00::/48" }), 'invalid IPv4 CIDR format (Network "fc00::/48")'],
    [
      "Network checked even when IPv4 disabled",
      cfg({ EnableIPv4: false, EnableIPv6: true, IPv6Network: "fc00::/48", Network: "x" }),
      "Network: invalid CIDR address: x",
    ],
    // §1 IPv6 validation, verbatim
    ["IPv6Network missing", cfg({ ...V6 }), "please define a correct IPv6Network parameter in the flannel config"],
    ["IPv6Network ::/0", cfg({ ...V6, IPv6Network: "::/0" }), "please define a correct IPv6Network parameter in the flannel config"],
    ["IPv6SubnetLen 127", cfg({ ...V6, IPv6Network: "fc00::/48", IPv6SubnetLen: 127 }), "SubnetLen must be less than /127"],
    [
      "IPv6SubnetLen < prefix+2",
      cfg({ ...V6, IPv6Network: "fc00::/48", IPv6SubnetLen: 49 }),
      "network must be able to accommodate at least four subnets",
    ],
    ["IPv6 /125 too small", cfg({ ...V6, IPv6Network: "fc00::/125" }), "IPv6Network is too small. Minimum useful network prefix is /124"],
    [
      "IPv6SubnetMin outside",
      cfg({ ...V6, IPv6Network: "fc00::/48", IPv6SubnetMin: "fc01::" }),
      "IPv6SubnetMin is not in the range of the IPv6Network",
    ],
    [
      "IPv6SubnetMax outside",
      cfg({ ...V6, IPv6Network: "fc00::/48", IPv6SubnetMax: "fc00:1::" }),
      "IPv6SubnetMax is not in the range of the IPv6Network",
    ],
    [
      "IPv6SubnetMin unaligned",
      cfg({ ...V6, IPv6Network: "fc00::/48", IPv6SubnetMin: "fc00:0:0:1::1" }),
      "IPv6SubnetMin is not on a SubnetLen boundary: fc00:0:0:1::1",
    ],
    [
      "IPv6SubnetMax unaligned",
      cfg({ ...V6, IPv6Network: "fc00::/48", IPv6SubnetMax: "fc00:0:0:ff:8000::" }),
      "IPv6SubnetMax is not on a SubnetLen boundary: fc00:0:0:ff:8000::",
    ],
    ["IPv6Network must be IPv6", cfg({ ...V6, IPv6Network: "10.0.0.0/8" }), 'invalid IPv6 CIDR format (IPv6Network "10.0.0.0/8")'],
    [
      "IPv4 errors come first",
      cfg({ EnableIPv6: true, IPv6Network: "fc00::/125" }),
      "please define a correct Network parameter in the flannel config",
    ],
    ["no family", cfg({ EnableIPv4: false }), "none defined stack"],
    ["no family (explicit both false)", cfg({ EnableIPv4: false, EnableIPv6: false, Network: "10.5.0.0/16" }), "none defined stack"],
    // wrong JSON types, naming the field
    ["Network number", '{"Network":10}', /^Network must be an IPv4 CIDR string.*got a number \(10\)$/],
    ["Network null", '{"Network":null}', /^Network must be an IPv4 CIDR string.*got null$/],
    ["Network not a CIDR", cfg({ Network: "10.5.0.0" }), "Network: invalid CIDR address: 10.5.0.0"],
    ["Network bad prefix", cfg({ Network: "10.5.0.0/33" }), "Network: invalid CIDR address: 10.5.0.0/33"],
    ["Network leading zero", cfg({ Network: "010.5.0.0/16" }), "Network: invalid CIDR address: 010.5.0.0/16"],
    ["IPv6Network object", cfg({ ...V6, IPv6Network: {} }), /^IPv6Network must be an IPv6 CIDR string.*got an object$/],
    ["SubnetLen string", cfg({ ...NET, SubnetLen: "24" }), "SubnetLen must be a non-negative integer, got a string"],
    ["SubnetLen negative", '{"Network":"10.5.0.0/16","SubnetLen":-1}', "SubnetLen must be a non-negative integer, got a number (-1)"],
    ["SubnetLen fraction", '{"Network":"10.5.0.0/16","SubnetLen":24.0}', "SubnetLen must be a non-negative integer, got a number (24.0)"],
    ["SubnetLen exponent", '{"Network":"10.5.0.0/16","SubnetLen":2e1}', "SubnetLen must be a non-negative integer, got a number (2e1)"],
    [
      "SubnetLen overflows uint64",
      '{"Network":"10.5.0.0/16","SubnetLen":18446744073709551616}',
      "SubnetLen must be a non-negative integer, got a number (18446744073709551616)",
    ],
    [
      "IPv6SubnetLen bool",
      cfg({ ...V6, IPv6Network: "fc00::/48", IPv6SubnetLen: true }),
      "IPv6SubnetLen must be a non-negative integer, got a boolean",
    ],
    ["EnableIPv4 string", cfg({ ...NET, EnableIPv4: "true" }), "EnableIPv4 must be true or false, got a string"],
    ["EnableIPv6 number", cfg({ ...NET, EnableIPv6: 1 }), "EnableIPv6 must be true or false, got a number (1)"],
    ["EnableNFTables array", cfg({ ...NET, EnableNFTables: [] }), "EnableNFTables must be true or false, got an array"],
    ["SubnetMin number", cfg({ ...NET, SubnetMin: 1 }), "SubnetMin must be an IPv4 address string, got a number (1)"],
    ["SubnetMin null", '{"Network":"10.5.0.0/16","SubnetMin":null}', "SubnetMin must be an IPv4 address string, got null"],
    ["SubnetMin not an IP", cfg({ ...NET, SubnetMin: "10.5.1" }), "SubnetMin: invalid IP address format: 10.5.1"],
    ["SubnetMax IPv6", cfg({ ...NET, SubnetMax: "fc00::" }), "SubnetMax: fc00:: is not an IPv4 address"],
    [
      "IPv6SubnetMin IPv4",
      cfg({ ...V6, IPv6Network: "fc00::/48", IPv6SubnetMin: "10.0.0.0" }),
      "IPv6SubnetMin: 10.0.0.0 is not an IPv6 address",
    ],
    [
      "IPv6SubnetMax number",
      cfg({ ...V6, IPv6Network: "fc00::/48", IPv6SubnetMax: 5 }),
      "IPv6SubnetMax must be an IPv6 address string, got a number (5)",
    ],
    ["Networks wrong type", cfg({ ...NET, Networks: "10.0.0.0/8" }), "Networks must be an array of CIDR strings, got a string"],
    ["Networks bad element", cfg({ ...NET, Networks: ["10.0.0.0/8", "x"] }), "Networks[1]: invalid CIDR address: x"],
    ["IPv6Networks IPv4 element", cfg({ ...NET, IPv6Networks: ["10.0.0.0/8"] }), 'invalid IPv6 CIDR format (IPv6Networks[0] "10.0.0.0/8")'],
    [
      "type error even in a duplicate that is later overwritten",
      '{"SubnetLen":"x","Network":"10.5.0.0/16","subnetlen":24}',
      "SubnetLen must be a non-negative integer, got a string",
    ],
    ["config is an array", "[]", /^config must be a JSON object, got an array/],
    ["config is a string", '"10.5.0.0/16"', /^config must be a JSON object, got a string/],
    // Backend
    ["Backend without Type", cfg({ ...NET, Backend: {} }), 'Backend.Type is missing or empty: set it to "vxlan" or "host-gw"'],
    ["Backend Type empty", cfg({ ...NET, Backend: { Type: "" } }), /^Backend.Type is missing or empty/],
    ["Backend Type null", '{"Network":"10.5.0.0/16","Backend":{"Type":null,"VNI":1}}', /^Backend.Type is missing or empty/],
    ["Backend Type number", cfg({ ...NET, Backend: { Type: 1 } }), "Backend.Type must be a string, got a number (1)"],
    ["Backend string", cfg({ ...NET, Backend: "vxlan" }), /^Backend must be an object such as \{"Type":"vxlan"\}, got a string$/],
    ["Backend array", cfg({ ...NET, Backend: [] }), /^Backend must be an object/],
    ["Backend decode error before network checks", cfg({ Backend: 3 }), /^Backend must be an object/],
    [
      "network checks before backend lookup",
      cfg({ Backend: { Type: "udp" } }),
      "please define a correct Network parameter in the flannel config",
    ],
    [
      "Backend Type with spaces is unknown",
      cfg({ ...NET, Backend: { Type: " vxlan" } }),
      'unsupported backend type " vxlan": flannel-bin supports vxlan and host-gw (not a backend type known to flannel or flannel-bin)',
    ],
    [
      "unknown backend",
      cfg({ ...NET, Backend: { Type: "geneve" } }),
      'unsupported backend type "geneve": flannel-bin supports vxlan and host-gw (not a backend type known to flannel or flannel-bin)',
    ],
    // invalid JSON, with position
    ["empty text", "", "config is not valid JSON: unexpected end of input at line 1, column 1"],
    ["truncated", '{"Network":"10.5.0.0/16"', "config is not valid JSON: unexpected end of input at line 1, column 25"],
    [
      "bad token on line 2",
      '{"Network":"10.5.0.0/16",\n  SubnetLen: 24}',
      'config is not valid JSON: unexpected character "S" at line 2, column 3',
    ],
    ["trailing comma", '{"Network":"10.5.0.0/16",}', 'config is not valid JSON: unexpected character "}" at line 1, column 26'],
    [
      "trailing garbage",
      '{"Network":"10.5.0.0/16"} x',
      'config is not valid JSON: unexpected "x" after the top-level value at line 1, column 27',
    ],
    [
      "NBSP shown as code point",
      '{"Network":\u00a0"10.5.0.0/16"}',
      "config is not valid JSON: unexpected character U+00A0 at line 1, column 12",
    ],
    ["single quotes", "{'Network':'10.5.0.0/16'}", 'config is not valid JSON: unexpected character "\'" at line 1, column 2'],
    ["unterminated string", '{"Network":"10.5', "config is not valid JSON: unterminated string at line 1, column 12"],
    ["bad escape", '{"Network":"\\x"}', "config is not valid JSON: invalid escape in string at line 1, column 13"],
    ["raw newline in string", '{"Network":"a\nb"}', "config is not valid JSON: control character in string at line 1, column 14"],
    ["comment", '{"Network":"10.5.0.0/16" // x\n}', 'config is not valid JSON: unexpected character "/" at line 1, column 26'],
    ["leading zero number", '{"SubnetLen":024}', 'config is not valid JSON: unexpected character "2" at line 1, column 15'],
    [
      "byte order mark",
      '\ufeff{"Network":"10.5.0.0/16"}',
      "config is not valid JSON: unexpected character U+FEFF (byte order mark) at line 1, column 1",
    ],
    ["NaN", '{"SubnetLen":NaN}', 'config is not valid JSON: unexpected character "N" at line 1, column 14'],
    [
      "very deep nesting",
      `{"x":${"[".repeat(5000)}${"]".repeat(5000)}}`,
      /^config is not valid JSON: nesting deeper than 64 at line 1, column \d+$/,
    ],
  ];
  for (const [name, text, message] of cases) {
    test(name, () => {
      let err: unknown;
      try {
        parseNetworkConfig(text);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ConfigError);
      const msg = (err as Error).message;
      if (typeof message === "string") expect(msg).toBe(message);
      else expect(msg).toMatch(message);
    });
  }

  test("flannel backends that flannel-bin does not implement", () => {
    for (const t of ["udp", "ipip", "ipsec", "wireguard", "alloc", "extension", "tencent-vpc", "UDP"]) {
      expect(() => parseNetworkConfig(cfg({ ...NET, Backend: { Type: t } }))).toThrow(
        `unsupported backend type "${t}": flannel-bin supports vxlan and host-gw (${t.toLowerCase()} is a flannel backend that flannel-bin does not implement)`,
      );
    }
  });

  test("exact verbatim messages", () => {
    const exact: [string, string][] = [
      [cfg({ ...NET, SubnetMin: "10.5.1.1" }), "SubnetMin is not on a SubnetLen boundary: 10.5.1.1"],
      [
        cfg({ ...V6, IPv6Network: "fc00::/48", IPv6SubnetMin: "fc00:0:0:1::1" }),
        "IPv6SubnetMin is not on a SubnetLen boundary: fc00:0:0:1::1",
      ],
      [cfg({ Network: "10.0.0.0/29" }), "network is too small. Minimum useful network prefix is /28"],
      [cfg({ ...V6, IPv6Network: "fc00::/125" }), "IPv6Network is too small. Minimum useful network prefix is /124"],
    ];
    for (const [text, msg] of exact) {
      try {
        parseNetworkConfig(text);
        throw new Error("expected a ConfigError");
      } catch (e) {
        expect((e as Error).message).toBe(msg);
      }
    }
  });
});

// What `config put` refuses because no agent could use it (issue 12): the agent reads configs through the same
// parseNetworkConfig, so each row is also what an agent says about such a config found in its store.
describe("parseNetworkConfig: configs no agent can use", () => {
  const NET = { Network: "10.5.0.0/16" };
  const vx = (o: Record<string, unknown>) => cfg({ ...NET, Backend: { Type: "vxlan", ...o } });
  const goType = (field: string, what: string, type = "int") =>
    `error decoding VXLAN backend config: json: cannot unmarshal ${what} into Go struct field .${field} of type ${type}`;
  const refused: [string, string, string][] = [
    ["VNI -1", vx({ VNI: -1 }), "Backend.VNI -1 is not in 0..16777215"],
    ["VNI 2^24", vx({ VNI: 16777216 }), "Backend.VNI 16777216 is not in 0..16777215"],
    ['VNI "1"', vx({ VNI: "1" }), goType("VNI", "string")],
    ["VNI 1.5", '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":1.5}}', goType("VNI", "number 1.5")],
    ["VNI 1e3", '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":1e3}}', goType("VNI", "number 1e3")],
    ["VNI true", vx({ VNI: true }), goType("VNI", "bool")],
    ["Port -1", vx({ Port: -1 }), "Backend.Port -1 is not in 0..65535 (0 = the kernel default 8472)"],
    ["Port 65536", vx({ Port: 65536 }), "Backend.Port 65536 is not in 0..65535 (0 = the kernel default 8472)"],
    ['Port "8472"', vx({ Port: "8472" }), goType("Port", "string")],
    ["MTU 50", vx({ MTU: 50 }), "Backend.MTU 50 is not in 68..65535 (IPv4 needs at least 68; 0 = the interface MTU)"],
    ["MTU 67", vx({ MTU: 67 }), "Backend.MTU 67 is not in 68..65535 (IPv4 needs at least 68; 0 = the interface MTU)"],
    [
      "MTU 1000 with IPv6",
      cfg({ ...NET, EnableIPv6: true, IPv6Network: "fc00::/48", Backend: { Type: "vxlan", MTU: 1000 } }),
      "Backend.MTU 1000 is not in 1280..65535 (IPv6 needs at least 1280; 0 = the interface MTU)",
    ],
    ['GBP "yes"', vx({ GBP: "yes" }), goType("GBP", "string", "bool")],
    ["DirectRouting 1", vx({ DirectRouting: 1 }), goType("DirectRouting", "number 1", "bool")],
    [
      "SubnetMin > SubnetMax",
      cfg({ ...NET, SubnetMin: "10.5.20.0", SubnetMax: "10.5.10.0" }),
      "SubnetMin 10.5.20.0 is above SubnetMax 10.5.10.0: no subnet can be allocated",
    ],
    [
      "IPv6SubnetMin > IPv6SubnetMax",
      cfg({ ...NET, EnableIPv6: true, IPv6Network: "fc00::/48", IPv6SubnetMin: "fc00:0:0:20::", IPv6SubnetMax: "fc00:0:0:10::" }),
      "IPv6SubnetMin fc00:0:0:20:: is above IPv6SubnetMax fc00:0:0:10::: no subnet can be allocated",
    ],
    [
      "Network 224.0.0.0/4",
      cfg({ Network: "224.0.0.0/4" }),
      "Network 224.0.0.0/4 overlaps the multicast range 224.0.0.0/4, which cannot carry cluster traffic",
    ],
    [
      "Network 127.0.0.0/8",
      cfg({ Network: "127.0.0.0/8" }),
      "Network 127.0.0.0/8 overlaps the loopback range 127.0.0.0/8, which cannot carry cluster traffic",
    ],
    [
      "Network 127.5.0.0/16",
      cfg({ Network: "127.5.0.0/16" }),
      "Network 127.5.0.0/16 overlaps the loopback range 127.0.0.0/8, which cannot carry cluster traffic",
    ],
    [
      "Network 0.0.0.0/8",
      cfg({ Network: "0.0.0.0/8" }),
      'Network 0.0.0.0/8 overlaps the unspecified/"this network" range 0.0.0.0/8, which cannot carry cluster traffic',
    ],
    [
      "Network 169.254.0.0/16",
      cfg({ Network: "169.254.0.0/16" }),
      "Network 169.254.0.0/16 overlaps the link-local range 169.254.0.0/16, which cannot carry cluster traffic",
    ],
    [
      "Network 240.0.0.0/8",
      cfg({ Network: "240.0.0.0/8" }),
      "Network 240.0.0.0/8 overlaps the reserved range 240.0.0.0/4 (with the broadcast address 255.255.255.255), which cannot carry cluster traffic",
    ],
    [
      "Network 255.255.0.0/16",
      cfg({ Network: "255.255.0.0/16" }),
      "Network 255.255.0.0/16 overlaps the reserved range 240.0.0.0/4 (with the broadcast address 255.255.255.255), which cannot carry cluster traffic",
    ],
    [
      "Network 0.0.0.0/1 covers 0/8 and 127/8",
      cfg({ Network: "0.0.0.0/1" }),
      'Network 0.0.0.0/1 overlaps the unspecified/"this network" range 0.0.0.0/8, which cannot carry cluster traffic',
    ],
    ...(
      [
        ["fe80::/64", "the link-local range fe80::/10"],
        ["ff02::/64", "the multicast range ff00::/8"],
        ["::1/128", "the loopback address ::1"],
        ["::/64", "the unspecified address ::"],
      ] as const
    ).map(
      ([n, why]) =>
        [
          `IPv6Network ${n}`,
          cfg({ ...NET, EnableIPv6: true, IPv6Network: n }),
          `IPv6Network ${n} overlaps ${why}, which cannot carry cluster traffic`,
        ] as [string, string, string],
    ),
    ["fewer than four subnets", cfg({ ...NET, SubnetLen: 17 }), "network must be able to accommodate at least four subnets"],
  ];
  for (const [name, text, message] of refused) {
    test(name, () => {
      expect(() => parseNetworkConfig(text)).toThrow(ConfigError);
      expect(() => parseNetworkConfig(text)).toThrow(message);
    });
  }

  const accepted: [string, string][] = [
    ["VNI 0", vx({ VNI: 0 })],
    ["VNI 16777215", vx({ VNI: 16777215 })],
    ["Port 0 and 65535", vx({ Port: 65535 })],
    ["MTU 0 = interface MTU", vx({ MTU: 0 })],
    ["MTU 68", vx({ MTU: 68 })],
    ["MTU 1280 with IPv6", cfg({ ...NET, EnableIPv6: true, IPv6Network: "fc00::/48", Backend: { Type: "vxlan", MTU: 1280 } })],
    ["null options keep defaults", vx({ VNI: null, Port: null, MTU: null, GBP: null })],
    ["host-gw ignores vxlan options", cfg({ ...NET, Backend: { Type: "host-gw", VNI: "x" } })],
  ];
  for (const [name, text] of accepted) test(`accepted: ${name}`, () => void parseNetworkConfig(text));

  test("a stored value cannot forge a log line: control characters and NUL come out escaped, length capped", () => {
    // JSON escapes: the decoded value holds a real newline and a real NUL
    const forged = `10.0.0.0/8\\nFAKE [agent] ready\\u0000${"x".repeat(5000)}`;
    let msg = "";
    try {
      parseNetworkConfig(`{"Network":"${forged}"}`);
    } catch (e) {
      msg = (e as Error).message;
    }
    expect(msg).toStartWith("Network: invalid CIDR address: 10.0.0.0/8\\nFAKE [agent] ready\\0xxx");
    expect(msg).not.toMatch(/[\x00-\x1f]/);
    expect(msg.length).toBeLessThan(400);
    expect(msg).toContain("more characters)");
  });
});

describe("formatNetworkConfigSummary", () => {
  test("IPv4", () => {
    expect(formatNetworkConfigSummary(parseNetworkConfig(DEFAULT_CONFIG_EXAMPLE))).toBe(
      "Network 10.5.0.0/16, SubnetLen 24, SubnetMin 10.5.1.0, SubnetMax 10.5.255.0, Backend vxlan",
    );
  });
  test("dual stack, host-gw, nftables", () => {
    const c = parseNetworkConfig(cfg({ ...V6, IPv6Network: "fc00::/48", EnableNFTables: true, Backend: { Type: "host-gw" } }));
    expect(formatNetworkConfigSummary(c)).toBe(
      "Network 10.5.0.0/16, SubnetLen 24, SubnetMin 10.5.1.0, SubnetMax 10.5.255.0, IPv6Network fc00::/48, IPv6SubnetLen 64, " +
        "IPv6SubnetMin fc00:0:0:1::, IPv6SubnetMax fc00:0:0:ffff::, Backend host-gw, NFTables",
    );
  });
  test("IPv6 only", () => {
    const c = parseNetworkConfig(cfg({ EnableIPv4: false, EnableIPv6: true, IPv6Network: "fc00::/48" }));
    expect(formatNetworkConfigSummary(c)).toBe(
      "IPv4 disabled, IPv6Network fc00::/48, IPv6SubnetLen 64, IPv6SubnetMin fc00:0:0:1::, IPv6SubnetMax fc00:0:0:ffff::, Backend vxlan",
    );
  });
  test("DEFAULT_CONFIG_EXAMPLE", () => {
    expect(DEFAULT_CONFIG_EXAMPLE).toBe('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}');
  });
});
