import { describe, expect, test } from "bun:test";
import { parseCIDR } from "../../src/ipmath.ts";
import { LeaseRecordError, decodeLeaseAttrs, encodeLeaseAttrs, leaseFromKV, parseSubnetKey, subnetKey } from "../../src/lease.ts";

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

describe("subnet keys", () => {
  test("flannel's layout, IPv4 and dual stack", () => {
    expect(subnetKey(parseCIDR("10.5.52.0/24"))).toBe("subnets/10.5.52.0-24");
    expect(subnetKey(parseCIDR("10.5.52.0/24"), parseCIDR("fc00:0:0:34::/64"))).toBe("subnets/10.5.52.0-24&fc00:0:0:34::-64");
    const p = parseSubnetKey("subnets/10.5.52.0-24&fc00:0:0:34::-64")!;
    expect(p.subnet.prefix).toBe(24);
    expect(p.ipv6Subnet!.prefix).toBe(64);
  });
  test.each([
    "subnets/10.5.52.0-32",
    "subnets/10.5.52.1-24",
    "subnets/010.5.52.0-24",
    "subnets/x",
    "subnets/10.5.52.0-24; rm",
    "config",
    "subnets/256.1.1.0-24",
    "subnets/10.5.52.0-24&fc00:0000:0:34::-64",
    "subnets/10.5.52.0-24&fc00:0:0:34::1-64",
  ])("rejects %p", (k) => expect(parseSubnetKey(k)).toBeNull());
});

describe("lease JSON", () => {
  test("encodes byte-for-byte as flanneld", () => {
    expect(
      dec(
        encodeLeaseAttrs({
          publicIP: "192.168.64.3",
          publicIPv6: null,
          backendType: "vxlan",
          backendData: { VNI: 1, VtepMAC: "c6:d2:32:6f:8f:44" },
        }),
      ),
    ).toBe('{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}');
    expect(dec(encodeLeaseAttrs({ publicIP: "192.168.64.3", publicIPv6: null, backendType: "host-gw" }))).toBe(
      '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"host-gw"}',
    );
  });
  test("decodes flannel records, lower-case keys and unknown fields", () => {
    const a = decodeLeaseAttrs(enc('{"publicip":"10.0.0.1","backendtype":"host-gw","Extra":1}'));
    expect(a).toEqual({ publicIP: "10.0.0.1", publicIPv6: null, backendType: "host-gw" });
    const b = decodeLeaseAttrs(
      enc(
        '{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"},"BackendV6Data":{"VNI":1}}',
      ),
    );
    expect(b.publicIPv6).toBe("fd00::3");
    expect(b.backendV6Data).toEqual({ VNI: 1 });
  });
  test.each([
    ["not json", "{"],
    ["array", "[]"],
    ["bad ip", '{"PublicIP":"1.2.3.4; reboot"}'],
    ["ipv6 as v4", '{"PublicIP":"::1"}'],
    ["bad v6", '{"PublicIP":"1.2.3.4","PublicIPv6":"1.2.3.4"}'],
    ["type", '{"PublicIP":"1.2.3.4","BackendType":7}'],
  ])("rejects %s", (_n, s) => expect(() => decodeLeaseAttrs(enc(s))).toThrow(LeaseRecordError));
  test('a "__proto__" key supplies nothing (no prototype pollution)', () => {
    // Without the guard, PublicIP 10.9.9.9 came through the prototype; now the record simply has none.
    expect(decodeLeaseAttrs(enc('{"__proto__":{"publicip":"10.9.9.9"}}')).publicIP).toBe("0.0.0.0");
  });
  test("leaseFromKV names the key", () => {
    expect(() => leaseFromKV({ key: "subnets/10.5.1.0-24", value: enc("{"), revision: 1, expiresAt: null })).toThrow(
      /subnets\/10.5.1.0-24/,
    );
  });
});
