// What traffic rules this host should have: plain values, validated CIDR text only (built from parsed IPNets).

export interface RuleSet {
  /** The flannel Network, e.g. "10.5.0.0/16". */
  network: string;
  /** Our own lease subnet, e.g. "10.5.52.0/24". */
  subnet: string;
  /** --ip-masq */
  masq: boolean;
  /** --iptables-forward-rules */
  forward: boolean;
  /** --random-fully / fully-random on the masquerade rules (supported and not --ip-masq-fully-random-disable). */
  randomFully: boolean;
}

export type EngineKind = "iptables-legacy" | "iptables-nft" | "nftables";
