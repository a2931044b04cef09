// Desired kernel state: what backends produce and the reconciler applies. Plain typed values only; every field is
// validated before it gets here (see validate.ts), so a command line is never built from raw store text.

export interface VxlanDevice {
  kind: "vxlan";
  name: string; // flannel.<VNI>
  vni: number;
  /** Local underlay IPv4 (the host's public IP). */
  local: string;
  /** Underlay device name. */
  underlay: string;
  /** UDP port; 0 = kernel default (8472). */
  port: number;
  learning: boolean;
  gbp: boolean;
  mtu: number;
  /** Lower-case colon-separated, locally administered unicast. */
  mac: string;
}

export type Device = VxlanDevice;

export interface Address {
  dev: string;
  /** e.g. "10.5.52.0/32" */
  cidr: string;
}

export interface Route {
  /** Destination network, e.g. "10.5.7.0/24". */
  dst: string;
  via: string;
  dev: string;
  onlink: boolean;
}

/** A nexthop object (Linux >= 5.3) a route refers to by id: one per distinct gateway/device/onlink. */
export interface Nexthop {
  id: number;
  via: string;
  dev: string;
  onlink: boolean;
}

export interface Neigh {
  dev: string;
  ip: string;
  lladdr: string;
}

export interface Fdb {
  dev: string;
  mac: string;
  /** Underlay IP of the peer VTEP. */
  dst: string;
}

/** A piece of desired state: the local device, or everything for one peer. */
export interface StateFragment {
  devices?: Device[];
  addresses?: Address[];
  routes?: Route[];
  neighs?: Neigh[];
  fdbs?: Fdb[];
}

/** Routes installed by flannel-bin carry this protocol number, so they are told apart from everyone else's. */
export const ROUTE_PROTO = 0x9f; // 159: unassigned in /etc/iproute2/rt_protos

/**
 * Our nexthop ids start at 159 << 24 (our protocol number in the top byte, 16M ids above it): far above the ids other
 * software hands out from 1 upward (FRR's zebra and its daemons stay below 2^31), and any id found in use by someone
 * else is skipped anyway.
 */
export const NEXTHOP_ID_BASE = ROUTE_PROTO * 2 ** 24;
export const NEXTHOP_ID_RANGE = 2 ** 24;
