import { describe, expect, test } from "bun:test";
import { linkAddVxlan, neighReplace, routeReplace } from "../../../src/kernel/commands.ts";
import {
  ValidationError,
  validDevName,
  validIP,
  validIfAddr,
  validMAC,
  validMTU,
  validNet,
  validPort,
  validVNI,
  validRoute,
} from "../../../src/kernel/validate.ts";

describe("validate", () => {
  test("device names", () => {
    expect(validDevName("flannel.1")).toBe("flannel.1");
    expect(validDevName("a-b_c.123456789")).toBe("a-b_c.123456789"); // 15
    for (const bad of ["eth0 up", "", ".", "..", "a234567890123456", "eth0;reboot", "eth0\n", "ä", 5, null])
      expect(() => validDevName(bad)).toThrow(ValidationError);
    expect(() => validDevName("eth0 up", "route dev")).toThrow('invalid route dev "eth0 up"');
  });

  test("addresses and networks are canonical", () => {
    expect(validIP("10.5.7.0")).toBe("10.5.7.0");
    expect(validIP("FD00:0:0::1")).toBe("fd00::1");
    expect(validNet("10.5.7.0/24")).toBe("10.5.7.0/24");
    expect(validNet("fd00:0::/64")).toBe("fd00::/64");
    expect(validIfAddr("10.5.7.1/24")).toBe("10.5.7.1/24");
    for (const bad of ["1.2.3.4; reboot", "1.2.3", "010.1.1.1", "256.1.1.1", "1.2.3.4 ", "::g", ""])
      expect(() => validIP(bad)).toThrow(ValidationError);
    expect(() => validIP("1.2.3.4; reboot", "fdb dst")).toThrow('invalid fdb dst "1.2.3.4; reboot"');
    expect(() => validNet("10.5.7.1/24")).toThrow("host bits set");
    expect(() => validNet("10.5.7.0/33")).toThrow(ValidationError);
    expect(() => validNet("10.5.7.0")).toThrow(ValidationError);
    expect(() => validIP("10.1.1.1", "x", 6)).toThrow("not an IPv6 address");
    for (const ok of ["0.0.0.0", "255.255.255.255", "1.22.133.4"]) expect(validIP(ok)).toBe(ok);
    for (const bad of ["1.2.3.", ".1.2.3", "1..2.3", "1.2.3.4.5", "00.1.1.1", "1.2.3.256", "1.2.3.1000", "1.2.3.-1"])
      expect(() => validIP(bad)).toThrow(ValidationError);
    expect(validNet("0.0.0.0/0")).toBe("0.0.0.0/0");
    expect(validNet("10.5.7.128/25")).toBe("10.5.7.128/25");
    expect(validNet("10.5.7.5/32")).toBe("10.5.7.5/32");
    for (const bad of ["10.5.7.0/08", "10.5.7.0/", "10.5.7.0/24 ", "10.5.7.0/-1", "10.5.7.64/25"])
      expect(() => validNet(bad)).toThrow(ValidationError);
  });

  test("MACs are lower-cased, junk rejected", () => {
    expect(validMAC("0A:1B:2C:3D:4E:5F")).toBe("0a:1b:2c:3d:4e:5f");
    for (const bad of ["zz:00:00:00:00:00", "0a:1b:2c:3d:4e", "0a-1b-2c-3d-4e-5f", "0a:1b:2c:3d:4e:5f dev lo", 1])
      expect(() => validMAC(bad)).toThrow(ValidationError);
  });

  test("numbers in range", () => {
    expect(validVNI(0)).toBe(0);
    expect(validVNI(16777215)).toBe(16777215);
    expect(() => validVNI(16777216)).toThrow("out of range");
    expect(() => validPort(65536)).toThrow(ValidationError);
    expect(() => validPort(1.5)).toThrow("not an integer");
    expect(() => validMTU(67)).toThrow(ValidationError);
    expect(() => validMTU("1450")).toThrow(ValidationError);
    expect(validMTU(1450)).toBe(1450);
  });

  test("builders reject hostile values before any command exists", () => {
    expect(() => routeReplace({ dst: "10.0.0.0/24", via: "1.2.3.4; reboot", dev: "eth0", onlink: false }, 159)).toThrow(
      'invalid route via "1.2.3.4; reboot"',
    );
    expect(() => routeReplace({ dst: "10.0.0.0/24", via: "1.2.3.4", dev: "eth0 up", onlink: false }, 159)).toThrow(ValidationError);
    expect(() => neighReplace({ dev: "flannel.1", ip: "10.0.0.0", lladdr: "zz:00:00:00:00:00" })).toThrow(
      'invalid neighbour lladdr "zz:00:00:00:00:00"',
    );
    expect(() => validRoute({ dst: "10.0.0.0/24", via: "fd00::1", dev: "eth0", onlink: false })).toThrow("family");
    const dev = {
      kind: "vxlan",
      name: "flannel.1",
      vni: 1,
      local: "10.0.0.1",
      underlay: "eth0",
      port: 0,
      learning: false,
      gbp: false,
      mtu: 1450,
      mac: "02:00:00:00:00:01",
    } as const;
    expect(linkAddVxlan(dev).line).toBe(
      "link add flannel.1 address 02:00:00:00:00:01 mtu 1450 type vxlan id 1 local 10.0.0.1 dev eth0 nolearning dstport 0",
    );
    expect(() => linkAddVxlan({ ...dev, vni: -1 })).toThrow("vxlan VNI");
    expect(() => linkAddVxlan({ ...dev, mac: "02:00:00:00:00:01 gbp" })).toThrow("vxlan MAC");
    // A validated value is frozen, so it cannot be changed after the check and then reach a builder.
    const v = validRoute({ dst: "10.0.0.0/24", via: "10.0.0.1", dev: "eth0", onlink: false });
    expect(Object.isFrozen(v)).toBe(true);
    expect(() => ((v as { via: string }).via = "1.2.3.4; reboot")).toThrow();
    expect(routeReplace({ dst: "10.0.0.0/24", via: "10.0.0.0", dev: "flannel.1", onlink: true }, 159).line).toBe(
      "route replace 10.0.0.0/24 via 10.0.0.0 dev flannel.1 onlink proto 159",
    );
  });
});
