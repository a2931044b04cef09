import { describe, expect, test } from "bun:test";
import { BackendError } from "../../../backends/backend.ts";
import { createBackend } from "../../../backends/index.ts";
import { checkUnicastMac, createVxlanBackend, parseVxlanOptions, vtepMac } from "../../../backends/vxlan.ts";
import { parseCIDR } from "../../../src/ipmath.ts";
import { encodeLeaseAttrs } from "../../../src/lease.ts";
import { ctx, extIface, lease } from "./helpers.ts";

const PEER_MAC = "0a:11:22:33:44:55";
const vx = (backendData: unknown, over: { publicIP?: string; subnet?: string; backendType?: string } = {}) =>
  lease(over.subnet ?? "10.5.7.0/24", { backendType: over.backendType ?? "vxlan", publicIP: over.publicIP ?? "192.0.2.7", backendData });

describe("vtepMac", () => {
  test("stable, locally administered unicast, differs by IP and VNI", () => {
    const a = vtepMac("192.0.2.2", 1);
    expect(vtepMac("192.0.2.2", 1)).toBe(a);
    expect(a).toMatch(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    for (const [ip, vni] of [
      ["192.0.2.2", 1],
      ["192.0.2.3", 1],
      ["192.0.2.2", 2],
      ["10.0.0.1", 4096],
    ] as const) {
      const first = parseInt(vtepMac(ip, vni).slice(0, 2), 16);
      expect(first & 1).toBe(0);
      expect(first & 2).toBe(2);
    }
    expect(vtepMac("192.0.2.3", 1)).not.toBe(a);
    expect(vtepMac("192.0.2.2", 2)).not.toBe(a);
  });

  test("the same MACs as every earlier release (a changed MAC would leave stale entries on the peers)", () => {
    expect(vtepMac("192.0.2.2", 1)).toBe("da:aa:ca:c4:da:68");
    expect(vtepMac("10.0.0.1", 4096)).toBe("fe:71:30:24:58:9e");
  });
});

describe("vxlan options", () => {
  test("defaults", () => {
    expect(parseVxlanOptions({ type: "vxlan" })).toEqual({ vni: 1, port: 0, gbp: false, learning: false, mtu: 0, directRouting: false });
  });
  test("values, keys folded", () => {
    expect(parseVxlanOptions({ VNI: 4096, port: 4789, gbp: true, Learning: true, mtu: 9000, directrouting: true })).toEqual({
      vni: 4096,
      port: 4789,
      gbp: true,
      learning: true,
      mtu: 9000,
      directRouting: true,
    });
    expect(parseVxlanOptions({ vni: 0 }).vni).toBe(0);
    expect(parseVxlanOptions({ vni: 16777215 }).vni).toBe(16777215);
  });
  test("wrong types and ranges name the option", () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ vni: "1" }, /VNI/],
      [{ vni: -1 }, /VNI/],
      [{ vni: 16777216 }, /VNI/],
      [{ vni: 1.5 }, /VNI/],
      [{ port: 65536 }, /Port/],
      [{ port: "8472" }, /Port/],
      [{ gbp: "true" }, /GBP/],
      [{ learning: 1 }, /Learning/],
      [{ mtu: -5 }, /MTU/],
      [{ directrouting: "yes" }, /DirectRouting/],
    ];
    for (const [o, re] of cases) {
      expect(() => parseVxlanOptions(o)).toThrow(BackendError);
      expect(() => parseVxlanOptions(o)).toThrow(re);
    }
  });
  test("MTU too small for the device is refused", () => {
    expect(() => createVxlanBackend(ctx("vxlan", { mtu: 100 }))).toThrow(/MTU/);
    expect(() => createVxlanBackend(ctx("vxlan", {}, { extIface: extIface({ mtu: 0 }) }))).toThrow(/MTU/);
  });
});

describe("vxlan backend", () => {
  test("device, mtu, lease attrs, local state", () => {
    const be = createBackend(ctx("vxlan", { vni: 4096, port: 4789, gbp: true }, { extIface: extIface({ mtu: 1400 }) }));
    expect(be.type).toBe("vxlan");
    expect(be.mtu).toBe(1350);
    expect(be.ownedDevices).toEqual(["flannel.4096"]);
    const mac = vtepMac("192.0.2.2", 4096);
    const attrs = be.leaseAttrs();
    expect(attrs).toEqual({ publicIP: "192.0.2.2", publicIPv6: null, backendType: "vxlan", backendData: { VNI: 4096, VtepMAC: mac } });
    expect(new TextDecoder().decode(encodeLeaseAttrs(attrs))).toBe(
      `{"PublicIP":"192.0.2.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":4096,"VtepMAC":"${mac}"}}`,
    );
    const own = lease("10.5.52.0/24", { backendType: "vxlan", publicIP: "192.0.2.2", backendData: attrs.backendData });
    expect(be.localState(own)).toEqual({
      devices: [
        {
          kind: "vxlan",
          name: "flannel.4096",
          vni: 4096,
          local: "192.0.2.2",
          underlay: "eth0",
          port: 4789,
          learning: false,
          gbp: true,
          mtu: 1350,
          mac,
        },
      ],
      addresses: [{ dev: "flannel.4096", cidr: "10.5.52.0/32" }],
    });
  });

  test("a compatible flannel.1 already there is adopted with its MAC (live migration from flanneld); anything else is not", () => {
    const flanneldMac = "7a:1b:2c:3d:4e:5f";
    const link = (info: Record<string, unknown>, address: string = flanneldMac) => ({
      ifname: "flannel.1",
      address,
      mtu: 1450,
      linkinfo: { info_kind: "vxlan", info_data: { id: 1, local: "192.0.2.2", link: "eth0", port: 8472, ...info } },
    });
    const macOf = (existingLinks: unknown[]) => {
      const be = createVxlanBackend(ctx("vxlan", {}, { existingLinks: existingLinks as never }));
      const mac = (be.leaseAttrs().backendData as { VtepMAC: string }).VtepMAC;
      const dev = be.localState(lease("10.5.1.0/24", { backendType: "vxlan" })).devices?.[0];
      expect(dev?.mac).toBe(mac); // the device we want and the lease we publish agree
      return mac;
    };
    const derived = vtepMac("192.0.2.2", 1);
    expect(macOf([link({})])).toBe(flanneldMac);
    expect(macOf([link({}, "7A:1B:2C:3D:4E:5F")])).toBe(flanneldMac);
    expect(macOf([])).toBe(derived);
    expect(macOf([{ ...link({}), ifname: "flannel.2" }])).toBe(derived);
    // Incompatible (it will be recreated): the derived MAC.
    expect(macOf([link({ id: 2 })])).toBe(derived);
    expect(macOf([link({ local: "192.0.2.9" })])).toBe(derived);
    expect(macOf([link({ port: 4789 })])).toBe(derived);
    expect(macOf([{ ...link({}), linkinfo: { info_kind: "bridge", info_data: {} } }])).toBe(derived);
    // A MAC no peer could use is never published.
    expect(macOf([link({}, "01:00:5e:00:00:01")])).toBe(derived);
    expect(macOf([link({}, "00:00:00:00:00:00")])).toBe(derived);
  });

  test("MTU option overrides the interface MTU", () => {
    expect(createVxlanBackend(ctx("vxlan", { mtu: 9000 })).mtu).toBe(8950);
    expect(createVxlanBackend(ctx("vxlan")).mtu).toBe(1450);
  });

  test("works behind NAT (public IP differs from interface IP)", () => {
    const be = createVxlanBackend(ctx("vxlan", {}, { publicIP: "203.0.113.9" }));
    expect(be.leaseAttrs().publicIP).toBe("203.0.113.9");
  });

  test("peer: neighbour, FDB and onlink route", () => {
    const be = createVxlanBackend(ctx("vxlan"));
    expect(be.peerState(vx({ vtepmac: "0A:11:22:33:44:55", vni: 1 }))).toEqual({
      state: {
        neighs: [{ dev: "flannel.1", ip: "10.5.7.0", lladdr: PEER_MAC }],
        fdbs: [{ dev: "flannel.1", mac: PEER_MAC, dst: "192.0.2.7" }],
        routes: [{ dst: "10.5.7.0/24", via: "10.5.7.0", dev: "flannel.1", onlink: true }],
      },
    });
    // Hyphen form (Go's net.ParseMAC accepts it) is normalised.
    const r = be.peerState(vx({ VNI: 1, VtepMAC: "0a-11-22-33-44-55" }));
    expect("state" in r && r.state.fdbs?.[0]?.mac).toBe(PEER_MAC);
  });

  test("other backend types are ignored", () => {
    const be = createVxlanBackend(ctx("vxlan"));
    expect(be.peerState(vx(undefined, { backendType: "host-gw" }))).toEqual({ ignored: '10.5.7.0/24: BackendType "host-gw" is not vxlan' });
    expect(be.peerState(vx({ VNI: 1, VtepMAC: PEER_MAC }, { backendType: "VXLAN" }))).toHaveProperty("ignored");
  });

  test("hostile BackendData and PublicIP are ignored with reasons naming the field", () => {
    const be = createVxlanBackend(ctx("vxlan"));
    const cases: [ReturnType<typeof vx>, RegExp][] = [
      [vx({ VNI: 1, VtepMAC: "aa:bb; rm -rf" }), /VtepMAC/],
      [vx({ VNI: 1, VtepMAC: "0a:11:22:33:44:55\n" }), /VtepMAC/],
      [vx({ VNI: 1, VtepMAC: "01:00:5e:00:00:01" }), /VtepMAC is a multicast/],
      [vx({ VNI: 1, VtepMAC: "00:00:00:00:00:00" }), /VtepMAC/],
      [vx({ VNI: 1, VtepMAC: "0a:11:22-33:44:55" }), /VtepMAC/],
      [vx({ VNI: 1, VtepMAC: 12 }), /VtepMAC/],
      [vx({ VNI: 1 }), /VtepMAC/],
      [vx({ VNI: "1", VtepMAC: PEER_MAC }), /VNI/],
      [vx({ VNI: 2, VtepMAC: PEER_MAC }), /VNI 2 differs from ours \(1\)/],
      [vx({ VNI: 1.5, VtepMAC: PEER_MAC }), /VNI/],
      [vx({ VtepMAC: PEER_MAC }), /VNI/],
      [vx("not an object"), /BackendData/],
      [vx([1, PEER_MAC]), /BackendData/],
      [vx(undefined), /BackendData/],
      [vx({ VNI: 1, VtepMAC: PEER_MAC }, { publicIP: "1.2.3.4 dev lo" }), /PublicIP/],
      [vx({ VNI: 1, VtepMAC: PEER_MAC }, { publicIP: "0.0.0.0" }), /PublicIP/],
      [vx({ VNI: 1, VtepMAC: PEER_MAC }, { publicIP: "127.0.0.1" }), /PublicIP/],
      [vx({ VNI: 1, VtepMAC: PEER_MAC }, { publicIP: "239.1.1.1" }), /PublicIP/],
      [vx({ VNI: 1, VtepMAC: PEER_MAC }, { publicIP: "192.0.2.2" }), /own address/],
      [vx({ VNI: 1, VtepMAC: PEER_MAC }, { subnet: "0.0.0.0/0" }), /outside the configured Network/],
    ];
    for (const [l, re] of cases) {
      const r = be.peerState(l);
      expect(r).toHaveProperty("ignored");
      expect((r as { ignored: string }).ignored).toMatch(re);
    }
  });

  test("DirectRouting: same segment gets a plain route, others stay encapsulated", () => {
    const be = createVxlanBackend(
      ctx(
        "vxlan",
        { DirectRouting: true },
        { extIface: extIface({ ipv4Nets: [parseCIDR("192.0.2.0/24"), parseCIDR("198.51.100.0/25")] }) },
      ),
    );
    const data = { VNI: 1, VtepMAC: PEER_MAC };
    expect(be.peerState(vx(data, { publicIP: "192.0.2.7" }))).toEqual({
      state: { routes: [{ dst: "10.5.7.0/24", via: "192.0.2.7", dev: "eth0", onlink: false }] },
    });
    expect(be.peerState(vx(data, { publicIP: "198.51.100.3" }))).toEqual({
      state: { routes: [{ dst: "10.5.7.0/24", via: "198.51.100.3", dev: "eth0", onlink: false }] },
    });
    const far = be.peerState(vx(data, { publicIP: "198.51.100.200" }));
    expect("state" in far && far.state.routes?.[0]).toEqual({ dst: "10.5.7.0/24", via: "10.5.7.0", dev: "flannel.1", onlink: true });
    expect("state" in far && far.state.fdbs?.[0]?.dst).toBe("198.51.100.200");
    // Without DirectRouting a same-segment peer is still encapsulated.
    const plain = createVxlanBackend(ctx("vxlan")).peerState(vx(data));
    expect("state" in plain && plain.state.neighs?.length).toBe(1);
  });

  test("checkUnicastMac", () => {
    expect(checkUnicastMac("AB:BB:CC:DD:EE:FF")).toEqual({ error: "VtepMAC is a multicast address: ab:bb:cc:dd:ee:ff" });
    expect(checkUnicastMac("AA:BB:CC:DD:EE:FF")).toEqual({ mac: "aa:bb:cc:dd:ee:ff" });
    expect(checkUnicastMac("02:BB:CC:DD:EE:FF")).toEqual({ mac: "02:bb:cc:dd:ee:ff" });
    expect(checkUnicastMac("02-bb-cc-dd-ee-ff")).toEqual({ mac: "02:bb:cc:dd:ee:ff" });
    // The multicast bit for every second digit, in each spelling (canonical strings take a path of their own).
    for (const [i, digit] of [..."0123456789abcdef"].entries()) {
      for (const mac of [`0${digit}:bb:cc:dd:ee:ff`, `0${digit.toUpperCase()}:BB:CC:DD:EE:FF`, `0${digit}-bb-cc-dd-ee-ff`]) {
        const want = `0${digit}:bb:cc:dd:ee:ff`;
        expect(checkUnicastMac(mac)).toEqual(i % 2 ? { error: `VtepMAC is a multicast address: ${want}` } : { mac: want });
      }
    }
  });
});
