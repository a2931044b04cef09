// vxlan backend (docs/flannel-compat.md §5): one flannel.<VNI> device; per peer a permanent neighbour (peer subnet address ->
// peer VTEP MAC), an FDB entry (VTEP MAC -> peer public IP) and an onlink route via the peer subnet address.
import { containsIP, formatIP, parseIP } from "../src/ipmath.ts";
import { fieldFolded, foldKeys, type Lease, type LeaseAttrs } from "../src/lease.ts";
import type { StateFragment, VxlanDevice } from "../src/kernel/types.ts";
import { vxlanCompatible } from "../src/kernel/device-compat.ts";
import { type Backend, type BackendContext, BackendError, type PeerState } from "./backend.ts";
import { checkPeerSubnet, checkUnderlayIPv4, ignored, sameIPv4 } from "./peer.ts";
import { logText } from "../src/log-text.ts";

/** Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14), as flannel's encapOverhead. */
export const VXLAN_OVERHEAD = 50;
export const MAX_VNI = 0xffffff;
const MIN_IPV4_MTU = 68;

export interface VxlanOptions {
  vni: number;
  /** 0 = kernel default (8472). */
  port: number;
  gbp: boolean;
  learning: boolean;
  /** 0 = use the external interface MTU. */
  mtu: number;
  directRouting: boolean;
}

function intOption(o: Record<string, unknown>, key: string, label: string, def: number, min: number, max: number): number {
  const v = o[key];
  if (v === undefined || v === null) return def;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max)
    throw new BackendError(`vxlan backend option ${label} must be an integer in ${min}..${max}, got ${JSON.stringify(v)}`);
  return v;
}

function boolOption(o: Record<string, unknown>, key: string, label: string): boolean {
  const v = o[key];
  if (v === undefined || v === null) return false;
  if (typeof v !== "boolean") throw new BackendError(`vxlan backend option ${label} must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

/** Reads the Backend options (keys already lower-cased by the config parser; folded again here to be safe). */
export function parseVxlanOptions(options: Record<string, unknown>): VxlanOptions {
  const o = foldKeys(options ?? {});
  return {
    vni: intOption(o, "vni", "VNI", 1, 0, MAX_VNI),
    port: intOption(o, "port", "Port", 0, 0, 65535),
    gbp: boolOption(o, "gbp", "GBP"),
    learning: boolOption(o, "learning", "Learning"),
    mtu: intOption(o, "mtu", "MTU", 0, 0, 65535),
    directRouting: boolOption(o, "directrouting", "DirectRouting"),
  };
}

/**
 * The VTEP MAC, derived from the public IP and VNI so it survives restarts and reboots (flannel's random MAC
 * leaves stale neighbour/FDB entries on peers: flannel #1788, #1828, k3s#9957). Locally administered unicast.
 */
export function vtepMac(publicIP: string, vni: number): string {
  // Bun's hasher, not node:crypto: loading that module cost each agent start ~1-4 ms (a storm's profile).
  const h = new Bun.CryptoHasher("sha256").update(`flannel-bin vtep ${publicIP} ${vni}`).digest();
  const b = [...h.subarray(0, 6)];
  b[0] = (b[0]! & 0xfe) | 0x02; // clear multicast bit, set locally-administered bit
  return b.map((x) => x.toString(16).padStart(2, "0")).join(":");
}

const MAC_RE = /^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(?:\1[0-9a-fA-F]{2}){4}$/;
const LOWER_COLON_MAC = /^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$/;

/** A 6-byte unicast MAC in lower-case colon form, or an error string. Accepts "aa:bb:.." and "aa-bb-..". */
export function checkUnicastMac(v: unknown): { mac: string } | { error: string } {
  if (typeof v !== "string") return { error: `VtepMAC is not a string: ${logText(v)}` };
  // Already lower-case with colons (as every flannel writes it): the string itself, one regex and no copies.
  let mac = v;
  if (!LOWER_COLON_MAC.test(v)) {
    if (!MAC_RE.test(v)) return { error: `VtepMAC is not a MAC address: ${logText(v)}` };
    mac = v.toLowerCase().replaceAll("-", ":");
  }
  if (mac === "00:00:00:00:00:00") return { error: "VtepMAC is all zeros" };
  // The multicast bit: the low bit of the first octet, i.e. of its second hex digit (read without a substring).
  const d = mac.charCodeAt(1);
  if ((d <= 57 ? d - 48 : d - 87) & 1) return { error: `VtepMAC is a multicast address: ${mac}` };
  return { mac };
}

export function createVxlanBackend(ctx: BackendContext): Backend {
  const { extIface, config } = ctx;
  const opts = parseVxlanOptions(config.backend.options);
  const local = checkUnderlayIPv4(ctx.publicIP, "public IP");
  if ("error" in local) throw new BackendError(`vxlan backend: ${local.error}`);
  const publicIP = local.ip;
  const baseMtu = opts.mtu > 0 ? opts.mtu : extIface.mtu;
  const mtu = baseMtu - VXLAN_OVERHEAD;
  if (!Number.isInteger(mtu) || mtu < MIN_IPV4_MTU)
    throw new BackendError(
      `vxlan backend: MTU ${baseMtu} (${opts.mtu > 0 ? "option MTU" : `interface ${extIface.name}`}) leaves ${mtu} for flannel.${opts.vni}, below ${MIN_IPV4_MTU}`,
    );
  const name = `flannel.${opts.vni}`;
  const device: VxlanDevice = {
    kind: "vxlan",
    name,
    vni: opts.vni,
    local: publicIP,
    underlay: extIface.name,
    port: opts.port,
    learning: opts.learning,
    gbp: opts.gbp,
    mtu,
    mac: vtepMac(publicIP, opts.vni),
  };
  // A compatible device already there (a previous run's, or flanneld's before a live migration) is kept with its MAC:
  // the peers' neighbour and fdb entries point at it, so adopting it costs no packet (flanneld keeps it the same way).
  const have = ctx.existingLinks?.find((l) => l.ifname === name);
  const haveMac = have && vxlanCompatible(device, have) ? checkUnicastMac(have.address) : null;
  if (haveMac && "mac" in haveMac) device.mac = haveMac.mac;
  const mac = device.mac;

  /** Same L2 segment as us: the peer's public IP is inside a network connected to the external interface. */
  const onLink = (ip: string): boolean => {
    const p = parseIP(ip)!;
    return extIface.ipv4Nets.some((n) => n.family === 4 && containsIP(n, p));
  };

  return {
    type: "vxlan",
    mtu,
    ownedDevices: [name],
    leaseAttrs(): LeaseAttrs {
      // Key order VNI, VtepMAC as flanneld writes it.
      return { publicIP, publicIPv6: null, backendType: "vxlan", backendData: { VNI: opts.vni, VtepMAC: mac } };
    },
    localState(own: Lease): StateFragment {
      if (own.subnet?.family !== 4) throw new BackendError("vxlan backend: own lease has no IPv4 subnet");
      // /32: a source address for host->pod traffic without a connected route for the whole subnet.
      return { devices: [device], addresses: [{ dev: name, cidr: `${formatIP(own.subnet.ip, 4)}/32` }] };
    },
    peerState(peer: Lease): PeerState {
      if (peer.attrs.backendType !== "vxlan") return ignored(peer, `BackendType ${logText(peer.attrs.backendType)} is not vxlan`);
      const badSubnet = checkPeerSubnet(peer, config);
      if (badSubnet) return ignored(peer, badSubnet);
      const ip = checkUnderlayIPv4(peer.attrs.publicIP);
      if ("error" in ip) return ignored(peer, ip.error);
      if (sameIPv4(ip.ip, publicIP)) return ignored(peer, `PublicIP ${ip.ip} is this host's own address`);

      const bd = peer.attrs.backendData;
      if (!bd || typeof bd !== "object" || Array.isArray(bd)) return ignored(peer, "BackendData is missing or not a JSON object");
      // Go's encoding/json: keys match case-insensitively.
      const vni = fieldFolded(bd as Record<string, unknown>, "vni");
      if (typeof vni !== "number" || !Number.isInteger(vni) || vni < 0 || vni > MAX_VNI)
        return ignored(peer, `BackendData VNI is not an integer in 0..${MAX_VNI}: ${vni === undefined ? "missing" : logText(vni)}`);
      if (vni !== opts.vni) return ignored(peer, `BackendData VNI ${vni} differs from ours (${opts.vni})`);
      const m = checkUnicastMac(fieldFolded(bd as Record<string, unknown>, "vtepmac"));
      if ("error" in m) return ignored(peer, `BackendData ${m.error}`);

      const gw = formatIP(peer.subnet.ip, 4);
      const dst = `${gw}/${peer.subnet.prefix}`;
      if (opts.directRouting && onLink(ip.ip)) {
        // Same segment: plain route to the peer host, no encapsulation (flannel's DirectRouting).
        return { state: { routes: [{ dst, via: ip.ip, dev: extIface.name, onlink: false }] } };
      }
      return {
        state: {
          neighs: [{ dev: name, ip: gw, lladdr: m.mac }],
          fdbs: [{ dev: name, mac: m.mac, dst: ip.ip }],
          routes: [{ dst, via: gw, dev: name, onlink: true }],
        },
      };
    },
  };
}
