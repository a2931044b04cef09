// Whether an existing vxlan device can be kept as it is, the one place that decides it (flannel's own test, compat
// notes §5). Keeping a compatible device keeps its ifindex, its MAC and everything riding on it: a device made by a
// previous run, or by flanneld during a live migration, is adopted instead of being recreated.
import type { VxlanDevice } from "./types.ts";

/** Actual state of one link as `ip -json -d addr show` (or `ip -json link show`) reports it. */
export interface KLink {
  ifname: string;
  flags?: string[];
  mtu?: number;
  address?: string;
  linkinfo?: { info_kind?: string; info_data?: Record<string, unknown> };
  addr_info?: { family?: string; local?: string; prefixlen?: number; scope?: string }[];
}

export const DEFAULT_VXLAN_PORT = 8472;

/** flannel's compatibility test (§5): type, VNI, underlay, local IP, port and GBP must match; MTU/learning/MAC may differ. */
export function vxlanCompatible(want: VxlanDevice, have: KLink): boolean {
  const info = have.linkinfo;
  if (info?.info_kind !== "vxlan" || !info.info_data) return false;
  const d = info.info_data;
  if (d.id !== want.vni) return false;
  if (typeof d.local === "string" && d.local !== want.local) return false;
  if (typeof d.link === "string" && d.link !== want.underlay) return false;
  if ((typeof d.port === "number" ? d.port : DEFAULT_VXLAN_PORT) !== (want.port || DEFAULT_VXLAN_PORT)) return false;
  if (d.group !== undefined || d.remote !== undefined) return false;
  return (d.gbp === true) === want.gbp;
}
