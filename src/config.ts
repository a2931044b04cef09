// Network config: parsed and checked exactly as flanneld's ParseConfig + CheckNetworkConfig (docs/flannel-compat.md §1).
//
// Go's encoding/json semantics are reproduced on purpose, because operators share one config between flanneld and
// flannel-bin: keys match case-insensitively, the last duplicate wins (document order), unknown keys are ignored and
// a value of the wrong JSON type is an error. JSON.parse loses document order for duplicates that differ only in
// case and gives no usable error position, so a small JSON reader lives here.
import { type IPNet, formatCIDR, formatIP, isAligned, containsIP, netSize, parseIP, tryParseCIDR } from "./ipmath.ts";
import { escapeLogText, logText } from "./log-text.ts";
import { reservedRange } from "./reserved-addresses.ts";

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

export class ConfigError extends Error {
  override name = "ConfigError";
}

/** A config that works out of the box; shown in help texts and error hints. */
export const DEFAULT_CONFIG_EXAMPLE = '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}';

// ---------------------------------------------------------------------------------------------------------------
// Minimal JSON reader: keeps object entries in document order and number literals verbatim (Go decodes "24.0" into
// a uint as an error, so the literal matters), and reports line/column on a syntax error.

type JVal =
  | { t: "obj"; entries: [string, JVal][] }
  | { t: "arr"; items: JVal[] }
  | { t: "str"; v: string }
  | { t: "num"; raw: string }
  | { t: "bool"; v: boolean }
  | { t: "null" };

const MAX_DEPTH = 64; // configs are shallow; the cap keeps hostile input from exhausting the stack

function readJSON(text: string): JVal {
  let i = 0;
  const where = (at: number): string => {
    let line = 1;
    let col = 1;
    for (let k = 0; k < at && k < text.length; k++) {
      if (text[k] === "\n") {
        line++;
        col = 1;
      } else col++;
    }
    return `line ${line}, column ${col}`;
  };
  const fail = (what: string, at = i): never => {
    throw new ConfigError(`config is not valid JSON: ${what} at ${where(at)}`);
  };
  // printable ASCII quoted, anything else as U+XXXX so invisible characters (a BOM, NBSP) are visible in logs
  const show = (ch: string): string =>
    /^[\x21-\x7e]$/.test(ch)
      ? JSON.stringify(ch)
      : `U+${ch.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}${ch === "\ufeff" ? " (byte order mark)" : ""}`;
  const unexpected = (): never => (i >= text.length ? fail("unexpected end of input") : fail(`unexpected character ${show(text[i]!)}`));
  const ws = () => {
    while (i < text.length && (text[i] === " " || text[i] === "\t" || text[i] === "\n" || text[i] === "\r")) i++;
  };
  const str = (): string => {
    const start = i;
    i++; // opening quote
    let out = "";
    for (;;) {
      if (i >= text.length) fail("unterminated string", start);
      const c = text[i]!;
      if (c === '"') {
        i++;
        return out;
      }
      if (c.charCodeAt(0) < 0x20) fail("control character in string");
      if (c !== "\\") {
        out += c;
        i++;
        continue;
      }
      const e = text[i + 1];
      const simple: Record<string, string> = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };
      if (e !== undefined && e in simple) {
        out += simple[e];
        i += 2;
      } else if (e === "u" && /^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) {
        out += String.fromCharCode(parseInt(text.slice(i + 2, i + 6), 16));
        i += 6;
      } else fail("invalid escape in string");
    }
  };
  const NUM = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
  const value = (depth: number): JVal => {
    if (depth > MAX_DEPTH) fail(`nesting deeper than ${MAX_DEPTH}`);
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const entries: [string, JVal][] = [];
      ws();
      if (text[i] === "}") {
        i++;
        return { t: "obj", entries };
      }
      for (;;) {
        ws();
        if (text[i] !== '"') unexpected();
        const k = str();
        ws();
        if (text[i] !== ":") unexpected();
        i++;
        entries.push([k, value(depth + 1)]);
        ws();
        if (text[i] === ",") i++;
        else if (text[i] === "}") {
          i++;
          return { t: "obj", entries };
        } else unexpected();
      }
    }
    if (c === "[") {
      i++;
      const items: JVal[] = [];
      ws();
      if (text[i] === "]") {
        i++;
        return { t: "arr", items };
      }
      for (;;) {
        items.push(value(depth + 1));
        ws();
        if (text[i] === ",") i++;
        else if (text[i] === "]") {
          i++;
          return { t: "arr", items };
        } else unexpected();
      }
    }
    if (c === '"') return { t: "str", v: str() };
    for (const [word, v] of [
      ["true", { t: "bool", v: true }],
      ["false", { t: "bool", v: false }],
      ["null", { t: "null" }],
    ] as const) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return v;
      }
    }
    NUM.lastIndex = i;
    const m = NUM.exec(text);
    if (m) {
      i += m[0].length;
      return { t: "num", raw: m[0] };
    }
    return unexpected();
  };
  const v = value(0);
  ws();
  if (i < text.length) fail(`unexpected ${show(text[i]!)} after the top-level value`);
  return v;
}

/** Go's encoding/json folds keys with Unicode simple folding; for ASCII field names that is lower-casing plus ſ/K. */
const foldKey = (k: string): string => k.toLowerCase().replace(/\u017f/g, "s");

const describe = (v: JVal): string =>
  ({ obj: "an object", arr: "an array", str: "a string", num: "a number", bool: "a boolean", null: "null" })[v.t];

function toPlain(v: JVal): unknown {
  switch (v.t) {
    case "obj": {
      const o: Record<string, unknown> = {};
      // defineProperty so a "__proto__" key stays an ordinary own key
      for (const [k, x] of v.entries)
        Object.defineProperty(o, k, { value: toPlain(x), enumerable: true, writable: true, configurable: true });
      return o;
    }
    case "arr":
      return v.items.map(toPlain);
    case "str":
    case "bool":
      return v.v;
    case "num":
      return Number(v.raw);
    case "null":
      return null;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Field decoders (one per Go type in flannel's Config struct).

const typeError = (field: string, want: string, got: JVal): ConfigError =>
  new ConfigError(`${field} must be ${want}, got ${describe(got)}${got.t === "num" ? ` (${got.raw})` : ""}`);

/** Go bool: true/false; null leaves the current value. */
function decodeBool(field: string, v: JVal, current: boolean): boolean {
  if (v.t === "null") return current;
  if (v.t !== "bool") throw typeError(field, "true or false", v);
  return v.v;
}

/** Go uint: a non-negative integer literal without fraction or exponent; null leaves the current value. */
function decodeUint(field: string, v: JVal, current: number): number {
  if (v.t === "null") return current;
  if (v.t !== "num" || !/^[0-9]+$/.test(v.raw) || BigInt(v.raw) > 0xffffffffffffffffn) throw typeError(field, "a non-negative integer", v);
  return Number(v.raw);
}

/** flannel's ip.IP4Net / ip.IP6Net: a CIDR string; host bits masked off. null is an error (UnmarshalJSON("null")). */
function decodeCIDR(field: string, v: JVal, family: 4 | 6): IPNet {
  if (v.t !== "str") throw typeError(field, `an IPv${family} CIDR string such as ${family === 4 ? '"10.5.0.0/16"' : '"fc00::/48"'}`, v);
  const net = tryParseCIDR(v.v);
  if (!net) throw new ConfigError(`${field}: invalid CIDR address: ${escapeLogText(v.v)}`);
  if (net.family !== family) throw new ConfigError(`invalid IPv${family} CIDR format (${field} ${logText(v.v)})`);
  return net;
}

/** flannel's ip.IP4 / ip.IP6: an address string. */
function decodeAddr(field: string, v: JVal, family: 4 | 6): bigint {
  if (v.t !== "str") throw typeError(field, `an IPv${family} address string`, v);
  const ip = parseIP(v.v);
  if (!ip) throw new ConfigError(`${field}: invalid IP address format: ${escapeLogText(v.v)}`);
  if (ip.family !== family) throw new ConfigError(`${field}: ${escapeLogText(v.v)} is not an IPv${family} address`);
  return ip.value;
}

// ---------------------------------------------------------------------------------------------------------------

/** Backend types flanneld registers but flannel-bin does not implement (they get a clearer error than unknown ones). */
const FLANNEL_ONLY_BACKENDS = ["udp", "ipip", "ipsec", "wireguard", "alloc", "extension", "tencent-vpc"];

interface RawConfig {
  enableIPv4: boolean;
  enableIPv6: boolean;
  enableNFTables: boolean;
  network: IPNet | null;
  ipv6Network: IPNet | null;
  subnetLen: number;
  ipv6SubnetLen: number;
  subnetMin: bigint;
  subnetMax: bigint;
  ipv6SubnetMin: bigint | null;
  ipv6SubnetMax: bigint | null;
  /** undefined = Backend absent (or null). */
  backend: JVal | undefined;
}

/** ParseConfig: decode into flannel's Config struct shape, with flannel's defaults. */
function decodeConfig(root: JVal): RawConfig {
  const c: RawConfig = {
    enableIPv4: true, // flannel pre-sets this before decoding
    enableIPv6: false,
    enableNFTables: false,
    network: null,
    ipv6Network: null,
    subnetLen: 0,
    ipv6SubnetLen: 0,
    subnetMin: 0n,
    subnetMax: 0n,
    ipv6SubnetMin: null,
    ipv6SubnetMax: null,
    backend: undefined,
  };
  if (root.t === "null") return c; // Go: unmarshalling null into a struct is a no-op
  if (root.t !== "obj") throw new ConfigError(`config must be a JSON object, got ${describe(root)}; example: ${DEFAULT_CONFIG_EXAMPLE}`);
  for (const [key, v] of root.entries) {
    switch (foldKey(key)) {
      case "enableipv4":
        c.enableIPv4 = decodeBool("EnableIPv4", v, c.enableIPv4);
        break;
      case "enableipv6":
        c.enableIPv6 = decodeBool("EnableIPv6", v, c.enableIPv6);
        break;
      case "enablenftables":
        c.enableNFTables = decodeBool("EnableNFTables", v, c.enableNFTables);
        break;
      case "network":
        c.network = decodeCIDR("Network", v, 4);
        break;
      case "ipv6network":
        c.ipv6Network = decodeCIDR("IPv6Network", v, 6);
        break;
      case "networks":
      case "ipv6networks": {
        // Present in flannel's struct (kube multi-CIDR); decoded (so bad values fail like in flannel) then dropped,
        // exactly as ParseConfig resets them.
        const v6 = foldKey(key) === "ipv6networks";
        const field = v6 ? "IPv6Networks" : "Networks";
        if (v.t === "null") break;
        if (v.t !== "arr") throw typeError(field, "an array of CIDR strings", v);
        v.items.forEach((x, n) => {
          decodeCIDR(`${field}[${n}]`, x, v6 ? 6 : 4);
        });
        break;
      }
      case "subnetlen":
        c.subnetLen = decodeUint("SubnetLen", v, c.subnetLen);
        break;
      case "ipv6subnetlen":
        c.ipv6SubnetLen = decodeUint("IPv6SubnetLen", v, c.ipv6SubnetLen);
        break;
      case "subnetmin":
        c.subnetMin = decodeAddr("SubnetMin", v, 4);
        break;
      case "subnetmax":
        c.subnetMax = decodeAddr("SubnetMax", v, 4);
        break;
      case "ipv6subnetmin": // a *ip.IP6 in flannel: null resets it to unset
        c.ipv6SubnetMin = v.t === "null" ? null : decodeAddr("IPv6SubnetMin", v, 6);
        break;
      case "ipv6subnetmax":
        c.ipv6SubnetMax = v.t === "null" ? null : decodeAddr("IPv6SubnetMax", v, 6);
        break;
      case "backend":
        // flannel keeps a json.RawMessage; we treat an explicit null like an absent Backend (flannel would see "null"
        // and then an empty Type); that is the friendlier reading and matches "missing Backend = default".
        c.backend = v.t === "null" ? undefined : v;
        break;
      default:
        break; // unknown keys are ignored (BackendType included: it is json:"-" in flannel)
    }
  }
  return c;
}

interface RawBackend {
  /** "" when Type is absent, null or empty; undefined when the whole Backend is absent. */
  type: string | undefined;
  options: Record<string, unknown>;
  /** The same options as parsed JSON (folded keys, last duplicate wins), for Go-exact type checks. */
  raw: Map<string, JVal>;
}

/** parseBackendType: decoding errors only (a non-object Backend, a non-string Type). */
function readBackend(v: JVal | undefined): RawBackend {
  if (v === undefined) return { type: undefined, options: {}, raw: new Map() };
  if (v.t !== "obj") throw typeError("Backend", `an object such as {"Type":"vxlan"}`, v);
  let type = "";
  const options: Record<string, unknown> = {};
  const raw = new Map<string, JVal>();
  for (const [key, x] of v.entries) {
    const k = foldKey(key);
    raw.set(k, x);
    Object.defineProperty(options, k, { value: toPlain(x), enumerable: true, writable: true, configurable: true });
    if (k === "type") {
      if (x.t === "null") type = "";
      else if (x.t === "str") type = x.v;
      else throw typeError("Backend.Type", "a string", x);
    }
  }
  return { type, options, raw };
}

/** The backend manager's lookup (lower-cased), restricted to what flannel-bin implements. */
function resolveBackend(b: RawBackend): BackendConfig {
  // DOC≠CODE in flannel: its code picks "udp" when Backend is absent, its docs (configuration.md) say vxlan.
  // We deliberately follow the docs: udp is not implemented here and vxlan is what users expect.
  if (b.type === undefined) return { type: "vxlan", options: {} };
  if (b.type === "") throw new ConfigError('Backend.Type is missing or empty: set it to "vxlan" or "host-gw"');
  const lower = b.type.toLowerCase();
  if (lower === "vxlan" || lower === "host-gw") return { type: lower, options: b.options };
  const why = FLANNEL_ONLY_BACKENDS.includes(lower)
    ? `${lower} is a flannel backend that flannel-bin does not implement`
    : "not a backend type known to flannel or flannel-bin";
  throw new ConfigError(`unsupported backend type ${logText(b.type)}: flannel-bin supports vxlan and host-gw (${why})`);
}

/** Not in flannel: a cluster network inside loopback, link-local or multicast space can never carry traffic. */
function refuseReserved(field: string, net: IPNet): void {
  const r = reservedRange(net);
  if (r) throw new ConfigError(`${field} ${formatCIDR(net)} overlaps ${r}, which cannot carry cluster traffic`);
}

const MAX_VNI = 0xffffff;
const MIN_MTU_IPV4 = 68;
const MIN_MTU_IPV6 = 1280;

/**
 * The vxlan options every agent would refuse or fail on, checked where the config is read (config put and the agent
 * alike). Type errors carry flannel's text (Go's json.Unmarshal into VXLANConfig); ranges are flannel-bin's own,
 * flannel leaves them to the kernel, which fails at device creation on every host.
 */
function checkVxlanOptions(raw: Map<string, JVal>, ipv6: boolean): void {
  const goInt = (name: string): number | null => {
    const v = raw.get(name.toLowerCase());
    if (v === undefined || v.t === "null") return null;
    if (v.t !== "num" || !/^-?[0-9]+$/.test(v.raw)) {
      throw new ConfigError(
        `error decoding VXLAN backend config: json: cannot unmarshal ${describeGo(v)} into Go struct field .${name} of type int`,
      );
    }
    return Number(v.raw);
  };
  for (const name of ["GBP", "Learning", "DirectRouting"]) {
    const v = raw.get(name.toLowerCase());
    if (v !== undefined && v.t !== "null" && v.t !== "bool")
      throw new ConfigError(
        `error decoding VXLAN backend config: json: cannot unmarshal ${describeGo(v)} into Go struct field .${name} of type bool`,
      );
  }
  const vni = goInt("VNI");
  if (vni !== null && (vni < 0 || vni > MAX_VNI)) throw new ConfigError(`Backend.VNI ${vni} is not in 0..${MAX_VNI}`);
  const port = goInt("Port");
  if (port !== null && (port < 0 || port > 65535))
    throw new ConfigError(`Backend.Port ${port} is not in 0..65535 (0 = the kernel default 8472)`);
  const mtu = goInt("MTU");
  const min = ipv6 ? MIN_MTU_IPV6 : MIN_MTU_IPV4;
  if (mtu !== null && mtu !== 0 && (mtu < min || mtu > 65535))
    throw new ConfigError(
      `Backend.MTU ${mtu} is not in ${min}..65535 (${ipv6 ? "IPv6 needs at least 1280" : "IPv4 needs at least 68"}; 0 = the interface MTU)`,
    );
}

/** Go's name for a JSON value's type in an Unmarshal error. */
const describeGo = (v: JVal): string =>
  v.t === "num"
    ? `number ${v.raw}`
    : v.t === "str"
      ? "string"
      : v.t === "obj"
        ? "object"
        : v.t === "arr"
          ? "array"
          : v.t === "bool"
            ? "bool"
            : "null";

/** CheckNetworkConfig, IPv4 half (messages verbatim from flannel). */
function checkIPv4(c: RawConfig): { subnetLen: number; subnetMin: bigint; subnetMax: bigint } {
  const net = c.network;
  if (!net || (net.ip === 0n && net.prefix === 0)) throw new ConfigError("please define a correct Network parameter in the flannel config");
  refuseReserved("Network", net);
  let subnetLen = c.subnetLen;
  if (subnetLen > 0) {
    if (subnetLen > 30) throw new ConfigError("SubnetLen must be less than /31");
    if (subnetLen < net.prefix + 2) throw new ConfigError("network must be able to accommodate at least four subnets");
  } else if (net.prefix > 28) {
    throw new ConfigError("network is too small. Minimum useful network prefix is /28");
  } else {
    subnetLen = net.prefix <= 22 ? 24 : net.prefix + 2;
  }
  const subnetSize = 1n << BigInt(32 - subnetLen);
  let { subnetMin, subnetMax } = c;
  // 0.0.0.0 means unset in flannel (ip.IP4 zero value); the first subnet is skipped on purpose.
  if (subnetMin === 0n) subnetMin = net.ip + subnetSize;
  else if (!containsIP(net, subnetMin)) throw new ConfigError("SubnetMin is not in the range of the Network");
  if (subnetMax === 0n) subnetMax = net.ip + netSize(net) - subnetSize;
  else if (!containsIP(net, subnetMax)) throw new ConfigError("SubnetMax is not in the range of the Network");
  if (!isAligned(subnetMin, subnetLen, 4)) throw new ConfigError(`SubnetMin is not on a SubnetLen boundary: ${formatIP(subnetMin, 4)}`);
  if (!isAligned(subnetMax, subnetLen, 4)) throw new ConfigError(`SubnetMax is not on a SubnetLen boundary: ${formatIP(subnetMax, 4)}`);
  // flannel does not check this: an inverted range only shows up later, as "out of subnets" on every host.
  if (subnetMin > subnetMax)
    throw new ConfigError(`SubnetMin ${formatIP(subnetMin, 4)} is above SubnetMax ${formatIP(subnetMax, 4)}: no subnet can be allocated`);
  return { subnetLen, subnetMin, subnetMax };
}

/** CheckNetworkConfig, IPv6 half. */
function checkIPv6(c: RawConfig): { ipv6SubnetLen: number; ipv6SubnetMin: bigint; ipv6SubnetMax: bigint } {
  const net = c.ipv6Network;
  if (!net || (net.ip === 0n && net.prefix === 0))
    throw new ConfigError("please define a correct IPv6Network parameter in the flannel config");
  refuseReserved("IPv6Network", net);
  let len = c.ipv6SubnetLen;
  if (len > 0) {
    if (len > 126) throw new ConfigError("SubnetLen must be less than /127");
    if (len < net.prefix + 2) throw new ConfigError("network must be able to accommodate at least four subnets");
  } else if (net.prefix > 124) {
    throw new ConfigError("IPv6Network is too small. Minimum useful network prefix is /124");
  } else {
    len = net.prefix <= 62 ? 64 : net.prefix + 2;
  }
  const size = 1n << BigInt(128 - len);
  // flannel's ip.IsEmpty: a nil or all-zero address means unset
  let min = c.ipv6SubnetMin ?? 0n;
  let max = c.ipv6SubnetMax ?? 0n;
  if (min === 0n) min = net.ip + size;
  else if (!containsIP(net, min)) throw new ConfigError("IPv6SubnetMin is not in the range of the IPv6Network");
  if (max === 0n) max = net.ip + netSize(net) - size;
  else if (!containsIP(net, max)) throw new ConfigError("IPv6SubnetMax is not in the range of the IPv6Network");
  if (!isAligned(min, len, 6)) throw new ConfigError(`IPv6SubnetMin is not on a SubnetLen boundary: ${formatIP(min, 6)}`);
  if (!isAligned(max, len, 6)) throw new ConfigError(`IPv6SubnetMax is not on a SubnetLen boundary: ${formatIP(max, 6)}`);
  if (min > max)
    throw new ConfigError(`IPv6SubnetMin ${formatIP(min, 6)} is above IPv6SubnetMax ${formatIP(max, 6)}: no subnet can be allocated`);
  return { ipv6SubnetLen: len, ipv6SubnetMin: min, ipv6SubnetMax: max };
}

/** Parses and validates config JSON text; throws ConfigError with flannel's message. */
export function parseNetworkConfig(text: string): NetworkConfig {
  if (typeof text !== "string") throw new ConfigError("config must be JSON text");
  const raw = decodeConfig(readJSON(text));
  // flannel order: decode errors, then parseBackendType's decode error, then CheckNetworkConfig, then the IP family
  // check in main, then the backend lookup.
  const backend = readBackend(raw.backend);
  const out: NetworkConfig = {
    enableIPv4: raw.enableIPv4,
    enableIPv6: raw.enableIPv6,
    enableNFTables: raw.enableNFTables,
    network: raw.network,
    subnetLen: raw.subnetLen,
    subnetMin: raw.subnetMin,
    subnetMax: raw.subnetMax,
    ipv6Network: raw.ipv6Network,
    ipv6SubnetLen: raw.ipv6SubnetLen,
    ipv6SubnetMin: raw.ipv6SubnetMin ?? 0n,
    ipv6SubnetMax: raw.ipv6SubnetMax ?? 0n,
    backend: { type: "vxlan", options: {} },
  };
  if (raw.enableIPv4) Object.assign(out, checkIPv4(raw));
  if (raw.enableIPv6) Object.assign(out, checkIPv6(raw));
  if (!raw.enableIPv4 && !raw.enableIPv6) throw new ConfigError("none defined stack");
  out.backend = resolveBackend(backend);
  if (out.backend.type === "vxlan") checkVxlanOptions(backend.raw, out.enableIPv6);
  return out;
}

/** One line for logs, e.g. "Network 10.5.0.0/16, SubnetLen 24, SubnetMin 10.5.1.0, SubnetMax 10.5.255.0, Backend vxlan". */
export function formatNetworkConfigSummary(c: NetworkConfig): string {
  const parts: string[] = [];
  if (c.enableIPv4 && c.network) {
    parts.push(`Network ${formatCIDR(c.network)}`, `SubnetLen ${c.subnetLen}`);
    parts.push(`SubnetMin ${formatIP(c.subnetMin, 4)}`, `SubnetMax ${formatIP(c.subnetMax, 4)}`);
  } else parts.push("IPv4 disabled");
  if (c.enableIPv6 && c.ipv6Network) {
    parts.push(`IPv6Network ${formatCIDR(c.ipv6Network)}`, `IPv6SubnetLen ${c.ipv6SubnetLen}`);
    parts.push(`IPv6SubnetMin ${formatIP(c.ipv6SubnetMin, 6)}`, `IPv6SubnetMax ${formatIP(c.ipv6SubnetMax, 6)}`);
  }
  parts.push(`Backend ${c.backend.type}`);
  if (c.enableNFTables) parts.push("NFTables");
  return parts.join(", ");
}
