import { describe, expect, test } from "bun:test";
import { BackendError } from "../../../backends/backend.ts";
import { createHostGwBackend, HOST_GW_NAT_ERROR } from "../../../backends/host-gw.ts";
import { createBackend } from "../../../backends/index.ts";
import { encodeLeaseAttrs } from "../../../src/lease.ts";
import { ctx, extIface, lease } from "./helpers.ts";

describe("host-gw backend", () => {
  test("refuses to start behind NAT with flannel's message", () => {
    expect(() => createHostGwBackend(ctx("host-gw", {}, { publicIP: "203.0.113.9" }))).toThrow(HOST_GW_NAT_ERROR);
    expect(() => createHostGwBackend(ctx("host-gw", {}, { publicIP: "203.0.113.9" }))).toThrow(BackendError);
    expect(() => createHostGwBackend(ctx("host-gw", {}, { extIface: extIface({ ipv4: null }) }))).toThrow(HOST_GW_NAT_ERROR);
  });

  test("mtu, lease attrs, local state, owned devices", () => {
    const be = createHostGwBackend(ctx("host-gw", {}, { extIface: extIface({ mtu: 9000 }) }));
    expect(be.type).toBe("host-gw");
    expect(be.mtu).toBe(9000);
    expect(be.ownedDevices).toEqual([]);
    expect(be.leaseAttrs()).toEqual({ publicIP: "192.0.2.2", publicIPv6: null, backendType: "host-gw" });
    expect(new TextDecoder().decode(encodeLeaseAttrs(be.leaseAttrs()))).toBe(
      '{"PublicIP":"192.0.2.2","PublicIPv6":null,"BackendType":"host-gw"}',
    );
    expect(be.localState(lease("10.5.52.0/24", { backendType: "host-gw", publicIP: "192.0.2.2" }))).toEqual({});
  });

  test("peer route via the peer's public IP on the external interface", () => {
    const be = createBackend(ctx("host-gw"));
    expect(be.type).toBe("host-gw");
    expect(be.peerState(lease("10.5.7.0/24", { backendType: "host-gw", publicIP: "192.0.2.7" }))).toEqual({
      state: { routes: [{ dst: "10.5.7.0/24", via: "192.0.2.7", dev: "eth0", onlink: false }] },
    });
  });

  test("other backend types are ignored, case-sensitively", () => {
    const be = createHostGwBackend(ctx("host-gw"));
    expect(be.peerState(lease("10.5.7.0/24", { backendType: "vxlan" }))).toEqual({
      ignored: '10.5.7.0/24: BackendType "vxlan" is not host-gw',
    });
    expect(be.peerState(lease("10.5.7.0/24", { backendType: "Host-GW" }))).toHaveProperty("ignored");
  });

  test("hostile peer values never reach a route", () => {
    const be = createHostGwBackend(ctx("host-gw"));
    const bad = ["0.0.0.0", "127.0.0.1", "224.0.0.5", "255.255.255.255", "1.2.3.4 dev lo", "fd00::1", "", "192.0.2.2"];
    for (const publicIP of bad) {
      const r = be.peerState(lease("10.5.7.0/24", { backendType: "host-gw", publicIP }));
      expect(r).toHaveProperty("ignored");
      expect((r as { ignored: string }).ignored).toMatch(/PublicIP/);
    }
    // A subnet outside Network (e.g. a default route) is refused.
    for (const s of ["0.0.0.0/0", "10.6.0.0/24", "10.0.0.0/8"]) {
      const r = be.peerState(lease(s, { backendType: "host-gw" }));
      expect((r as { ignored: string }).ignored).toMatch(/outside the configured Network/);
    }
  });

  test("createBackend rejects unknown types", () => {
    const c = ctx("host-gw");
    (c.config.backend as { type: string }).type = "udp";
    expect(() => createBackend(c)).toThrow(/unsupported backend type "udp"/);
  });
});
