// Desired-state fixtures shared by the kernel tests (unit and root): one vxlan device with overridable fields.
import type { VxlanDevice } from "../../src/kernel/types.ts";

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
