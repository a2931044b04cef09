// host-gw backend (docs/flannel-compat.md §6): every peer subnet is routed via the peer's public IP on the external
// interface. No encapsulation, so all hosts must share one L2 segment; the kernel refuses unreachable gateways.
import { formatCIDR } from "../src/ipmath.ts";
import type { Lease, LeaseAttrs } from "../src/lease.ts";
import type { StateFragment } from "../src/kernel/types.ts";
import { type Backend, type BackendContext, BackendError, type PeerState } from "./backend.ts";
import { checkPeerSubnet, checkUnderlayIPv4, ignored, sameIPv4 } from "./peer.ts";
import { logText } from "../src/log-text.ts";

export const HOST_GW_NAT_ERROR =
  "your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is not supported by host-gw backend";

export function createHostGwBackend(ctx: BackendContext): Backend {
  const { extIface, publicIP, config } = ctx;
  // Peers route to our public IP directly; behind NAT that address is not on this host's wire.
  if (!sameIPv4(publicIP, extIface.ipv4)) throw new BackendError(HOST_GW_NAT_ERROR);
  if (!Number.isInteger(extIface.mtu) || extIface.mtu <= 0)
    throw new BackendError(`external interface ${extIface.name} has no valid MTU: ${extIface.mtu}`);

  return {
    type: "host-gw",
    mtu: extIface.mtu,
    ownedDevices: [],
    leaseAttrs(): LeaseAttrs {
      return { publicIP, publicIPv6: null, backendType: "host-gw" };
    },
    localState(_own: Lease): StateFragment {
      return {};
    },
    peerState(peer: Lease): PeerState {
      // Case-sensitive, as flannel compares BackendType with ==.
      if (peer.attrs.backendType !== "host-gw") return ignored(peer, `BackendType ${logText(peer.attrs.backendType)} is not host-gw`);
      const bad = checkPeerSubnet(peer, config);
      if (bad) return ignored(peer, bad);
      const ip = checkUnderlayIPv4(peer.attrs.publicIP);
      if ("error" in ip) return ignored(peer, ip.error);
      if (sameIPv4(ip.ip, publicIP)) return ignored(peer, `PublicIP ${ip.ip} is this host's own address`);
      return { state: { routes: [{ dst: formatCIDR(peer.subnet), via: ip.ip, dev: extIface.name, onlink: false }] } };
    },
  };
}
