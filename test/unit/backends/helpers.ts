// Hand-built NetworkConfig / ExternalInterface / Lease values for pure backend tests.
import type { BackendContext, ExternalInterface } from "../../../backends/backend.ts";
import type { BackendType, NetworkConfig } from "../../../src/config.ts";
import { parseCIDR } from "../../../src/ipmath.ts";
import type { Lease, LeaseAttrs } from "../../../src/lease.ts";

export function netConfig(type: BackendType, options: Record<string, unknown> = {}): NetworkConfig {
  const network = parseCIDR("10.5.0.0/16");
  return {
    enableIPv4: true,
    enableIPv6: false,
    enableNFTables: false,
    network,
    subnetLen: 24,
    subnetMin: parseCIDR("10.5.1.0/24").ip,
    subnetMax: parseCIDR("10.5.255.0/24").ip,
    ipv6Network: null,
    ipv6SubnetLen: 0,
    ipv6SubnetMin: 0n,
    ipv6SubnetMax: 0n,
    backend: { type, options: { type, ...options } },
  };
}

export function extIface(over: Partial<ExternalInterface> = {}): ExternalInterface {
  return { name: "eth0", index: 4, mtu: 1500, ipv4: "192.0.2.2", ipv4Nets: [parseCIDR("192.0.2.0/24")], ...over };
}

export function ctx(type: BackendType, options: Record<string, unknown> = {}, over: Partial<BackendContext> = {}): BackendContext {
  return { config: netConfig(type, options), extIface: extIface(), publicIP: "192.0.2.2", ...over };
}

export function lease(subnet: string, attrs: Partial<LeaseAttrs> & { backendType: string }): Lease {
  return {
    subnet: parseCIDR(subnet),
    ipv6Subnet: null,
    attrs: { publicIP: "192.0.2.7", publicIPv6: null, ...attrs },
    expiresAt: Date.now() + 3600_000,
    revision: 5,
  };
}
