// The backend interface: a backend turns leases into desired kernel state. It never execs anything and never
// reads the kernel; what it needs to know about the host arrives in BackendContext.
import type { NetworkConfig } from "../src/config.ts";
import type { IPNet } from "../src/ipmath.ts";
import type { Lease, LeaseAttrs } from "../src/lease.ts";
import type { KLink } from "../src/kernel/device-compat.ts";
import type { StateFragment } from "../src/kernel/types.ts";

export interface ExternalInterface {
  name: string;
  index: number;
  mtu: number;
  /** The interface's IPv4 address chosen for the underlay. */
  ipv4: string | null;
  /** Connected IPv4 networks on the interface (for DirectRouting's "same L2 segment" test). */
  ipv4Nets: IPNet[];
}

export interface BackendContext {
  config: NetworkConfig;
  extIface: ExternalInterface;
  /** The host's public IPv4 (--public-ip, else the interface address). */
  publicIP: string;
  /** The links the kernel has at start: a compatible vxlan device there is adopted with its MAC. */
  existingLinks?: KLink[];
}

export type PeerState = { state: StateFragment } | { ignored: string };

export interface Backend {
  readonly type: "vxlan" | "host-gw";
  /** MTU for subnet.env (FLANNEL_MTU). */
  readonly mtu: number;
  /** Devices this backend owns: the reconciler may create, change and delete them and everything on them. */
  readonly ownedDevices: string[];
  /** Attrs to publish in our lease (BackendType, BackendData). */
  leaseAttrs(): LeaseAttrs;
  /** Kernel state for our own lease (vxlan: device and its address; host-gw: none). */
  localState(own: Lease): StateFragment;
  /** Kernel state for one peer's lease, or why it is ignored (other backend type, bad BackendData). */
  peerState(peer: Lease): PeerState;
}

export class BackendError extends Error {}
