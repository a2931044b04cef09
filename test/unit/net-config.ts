// A host-gw IPv4 network config for unit tests, with flannel's default SubnetMin/SubnetMax unless given.
import type { NetworkConfig } from "../../src/config.ts";
import { parseCIDR, parseIPv4 } from "../../src/ipmath.ts";

export function cfg(network: string, subnetLen: number, min?: string, max?: string): NetworkConfig {
  const net = parseCIDR(network);
  const size = 1n << BigInt(32 - subnetLen);
  return {
    enableIPv4: true,
    enableIPv6: false,
    enableNFTables: false,
    network: net,
    subnetLen,
    subnetMin: min ? parseIPv4(min)! : net.ip + size,
    subnetMax: max ? parseIPv4(max)! : net.ip + (1n << BigInt(32 - net.prefix)) - size,
    ipv6Network: null,
    ipv6SubnetLen: 0,
    ipv6SubnetMin: 0n,
    ipv6SubnetMax: 0n,
    backend: { type: "host-gw", options: {} },
  };
}
