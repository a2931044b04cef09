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
