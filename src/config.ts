// Network config: parsed and checked exactly as flanneld's ParseConfig + CheckNetworkConfig (flannel-compat §1).
import type { IPNet } from "./ipmath.ts";

export type BackendType = "vxlan" | "host-gw";

export interface BackendConfig {
  type: BackendType;
  /** The Backend object with its keys lower-cased (Go's case-insensitive matching); options are read by the backend. */
  options: Record<string, unknown>;
}

export interface NetworkConfig {
  enableIPv4: boolean;
  enableIPv6: boolean;
  enableNFTables: boolean;
  network: IPNet | null;
  subnetLen: number;
  /** First and last allocatable subnet network addresses (IPv4). */
  subnetMin: bigint;
  subnetMax: bigint;
  ipv6Network: IPNet | null;
  ipv6SubnetLen: number;
  ipv6SubnetMin: bigint;
  ipv6SubnetMax: bigint;
  backend: BackendConfig;
}

export class ConfigError extends Error {}

/** Parses and validates config JSON text; throws ConfigError with flannel's message. */
export function parseNetworkConfig(_text: string): NetworkConfig {
  throw new ConfigError("not implemented");
}
