// Desired-state fixtures shared by the kernel tests (unit and root) and the routes benchmark: one vxlan device with
// overridable fields, a peer's entries in the shape the backends make them, and the `ip link add` words that leave a
// vxlan device in a namespace as a previous run would have.
import { linkAddVxlan } from "../../src/kernel/commands.ts";
import type { StateFragment, VxlanDevice } from "../../src/kernel/types.ts";

export const vxlanDevice = (over: Partial<VxlanDevice> = {}): VxlanDevice => ({
  kind: "vxlan",
  name: "flannel.1",
  vni: 1,
  local: "192.168.77.1",
  underlay: "ul0",
  port: 0,
  learning: false,
  gbp: false,
  mtu: 1450,
  mac: "02:aa:00:00:00:01",
  ...over,
});

/** A vxlan peer (backends/vxlan.ts): neighbour and FDB entry for its VTEP, then the onlink route to its /24. */
export const vxlanPeerState = (subnetIp: string, mac: string, underlayIp: string, dev = "flannel.1"): StateFragment => ({
  neighs: [{ dev, ip: subnetIp, lladdr: mac }],
  fdbs: [{ dev, mac, dst: underlayIp }],
  routes: [{ dst: `${subnetIp}/24`, via: subnetIp, dev, onlink: true }],
});

/** A host-gw peer (backends/host-gw.ts): the route to its /24 via its public IP. */
export const hostgwPeerState = (subnetIp: string, gateway: string, dev = "ul0"): StateFragment => ({
  routes: [{ dst: `${subnetIp}/24`, via: gateway, dev, onlink: false }],
});

/** `ip link add ...` words for `dev` (the agent's own command), to set up a device before the code under test runs. */
export const vxlanLinkAdd = (dev: VxlanDevice): string[] => linkAddVxlan(dev).line.split(" ");
