// Command-line flags the way flanneld users type them: Go's flag syntax (`-flag=v`, `-flag v`, `--flag=v`,
// `--flag v`, booleans as `--flag` or `--flag=false`) and every flag also as FLANNELD_<NAME> in the environment,
// applied only when the flag is not on the command line. Unknown flags and bad values are errors, never ignored.

import type { ArgsDef } from "citty";

export type FlagType = "string" | "boolean" | "int" | "duration" | "list";

export interface FlagSpec {
  type: FlagType;
  description: string;
  default?: string | number | boolean;
  /** Allowed values for a string flag. */
  choices?: readonly string[];
  min?: number;
  max?: number;
}

export type FlagSpecs = Record<string, FlagSpec>;
export type FlagValue = string | number | boolean | string[] | undefined;
export type ParsedFlags = { values: Record<string, FlagValue>; positionals: string[] };

/** A wrong flag, value or argument: the message names it; the command exits 2. */
export class FlagError extends Error {}

export const envName = (flag: string): string => `FLANNELD_${flag.toUpperCase().replaceAll("-", "_")}`;

/** Go durations ("24h", "1h30m", "90s", "500ms") or plain seconds ("86400"); returns milliseconds. */
export function parseDuration(s: string): number | null {
  if (/^\d+(\.\d+)?$/.test(s)) return Number(s) * 1000;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
  const unit: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  let total = 0;
  let pos = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(s))) {
    total += Number(m[1]) * unit[m[2]!]!;
    pos = re.lastIndex;
  }
  return pos === s.length && pos > 0 ? total : null;
}

function convert(spec: FlagSpec, raw: string, from: string): FlagValue {
  const bad = (why: string) => new FlagError(`invalid value ${JSON.stringify(raw)} for ${from}: ${why}`);
  switch (spec.type) {
    case "boolean": {
      const v = raw.toLowerCase();
      if (["true", "1", "t", "yes"].includes(v)) return true;
      if (["false", "0", "f", "no"].includes(v)) return false;
      throw bad("expected true or false");
    }
    case "int": {
      if (!/^-?\d+$/.test(raw)) throw bad("expected a whole number");
      const n = Number(raw);
      if (spec.min !== undefined && n < spec.min) throw bad(`must be at least ${spec.min}`);
      if (spec.max !== undefined && n > spec.max) throw bad(`must be at most ${spec.max}`);
      return n;
    }
    case "duration": {
      const ms = parseDuration(raw);
      if (ms === null || ms <= 0) throw bad('expected a duration such as "24h", "90s" or a number of seconds');
      return ms;
    }
    case "list":
      return raw.split(",").filter((x) => x !== "");
    case "string":
      if (spec.choices && !spec.choices.includes(raw)) throw bad(`expected one of ${spec.choices.join(", ")}`);
      return raw;
  }
}

export function parseFlags(argv: string[], specs: FlagSpecs, env: Record<string, string | undefined> = process.env): ParsedFlags {
  const values: Record<string, FlagValue> = {};
  const positionals: string[] = [];
  const given = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith("-") || arg === "-") {
      positionals.push(arg);
      continue;
    }
    const body = arg.replace(/^--?/, "");
    const eq = body.indexOf("=");
    const name = eq < 0 ? body : body.slice(0, eq);
    const spec = specs[name];
    if (!spec) throw new FlagError(`unknown flag ${arg.split("=")[0]} (see --help for the flags of this command)`);
    let raw: string;
    if (eq >= 0) raw = body.slice(eq + 1);
    else if (spec.type === "boolean")
      raw = "true"; // Go: a bare boolean flag is true; `--x false` is not a value
    else {
      const next = argv[i + 1];
      if (next === undefined) throw new FlagError(`flag needs an argument: ${arg}`);
      raw = next;
      i++;
    }
    const v = convert(spec, raw, `flag --${name}`);
    // Repeatable list flags (--iface a --iface b) accumulate; others: the last one wins, as in Go.
    values[name] = spec.type === "list" && Array.isArray(values[name]) ? [...(values[name] as string[]), ...(v as string[])] : v;
    given.add(name);
  }
  for (const [name, spec] of Object.entries(specs)) {
    if (given.has(name)) continue;
    const e = env[envName(name)];
    if (e !== undefined && e !== "") {
      values[name] = convert(spec, e, envName(name));
      given.add(name);
    } else if (spec.default !== undefined)
      values[name] =
        spec.type === "duration"
          ? parseDuration(String(spec.default))!
          : spec.type === "list"
            ? String(spec.default).split(",")
            : spec.default;
  }
  if ("store" in specs && !given.has("store")) values.store = inferStore(given);
  return { values, positionals };
}

/**
 * Without --store, the store follows the flags given: flanneld users write `-etcd-endpoints=… -etcd-prefix=…`
 * and mean etcd; NATS flags mean NATS; otherwise the embedded SQLite file.
 */
function inferStore(given: Set<string>): string {
  const any = (p: string) => [...given].some((n) => n.startsWith(p));
  if (any("etcd-")) return "etcd";
  if (any("nats-")) return "nats";
  return "sqlite";
}

/** citty argument definitions for --help, generated from the same specs. */
export function cittyArgs(specs: FlagSpecs): ArgsDef {
  const out: ArgsDef = {};
  for (const [name, s] of Object.entries(specs)) {
    const description = `${s.description} [${envName(name)}]`;
    out[name] =
      s.type === "boolean"
        ? { type: "boolean", description }
        : { type: "string", description, ...(s.default !== undefined ? { default: String(s.default) } : {}) };
  }
  return out;
}

export const STORE_FLAGS = {
  store: {
    type: "string",
    description: "lease store: sqlite (one machine), etcd or nats; without it, --etcd-* flags mean etcd and --nats-* flags nats",
    default: "sqlite",
    choices: ["sqlite", "etcd", "nats"],
  },
  "sqlite-path": { type: "string", description: "SQLite database file (--store sqlite)", default: "/var/lib/flannel-bin/flannel.db" },
  "etcd-endpoints": {
    type: "string",
    description: "comma-separated etcd endpoints",
    default: "http://127.0.0.1:4001,http://127.0.0.1:2379",
  },
  "etcd-prefix": { type: "string", description: "etcd prefix of the network config and leases", default: "/coreos.com/network" },
  "etcd-keyfile": { type: "string", description: "SSL key file used to secure etcd communication" },
  "etcd-certfile": { type: "string", description: "SSL certification file used to secure etcd communication" },
  "etcd-cafile": { type: "string", description: "SSL Certificate Authority file used to secure etcd communication" },
  "etcd-username": { type: "string", description: "username for BasicAuth to etcd" },
  "etcd-password": { type: "string", description: "password for BasicAuth to etcd" },
  "nats-url": { type: "string", description: "comma-separated NATS server URLs", default: "nats://127.0.0.1:4222" },
  "nats-bucket": { type: "string", description: "JetStream KV bucket holding config and leases", default: "flannel" },
  "nats-replicas": {
    type: "int",
    description: "replicas of the KV bucket when flannel-bin creates it (3 on a 3-server JetStream cluster)",
    default: 1,
    min: 1,
    max: 5,
  },
  "nats-user": { type: "string", description: "NATS user" },
  "nats-password": { type: "string", description: "NATS password" },
  "nats-token": { type: "string", description: "NATS token" },
  "nats-creds": { type: "string", description: "NATS credentials file (JWT + nkey)" },
  "nats-cafile": { type: "string", description: "CA file for NATS TLS" },
  "nats-certfile": { type: "string", description: "client certificate for NATS TLS" },
  "nats-keyfile": { type: "string", description: "client key for NATS TLS" },
} as const satisfies FlagSpecs;

export const RUN_FLAGS = {
  ...STORE_FLAGS,
  "public-ip": { type: "string", description: "IP accessible by other nodes for inter-host communication (default: the interface's IP)" },
  iface: { type: "list", description: "interface to use (IP or name) for inter-host communication; repeatable, tried in order" },
  "iface-regex": { type: "list", description: "regex of interface IPs or names; repeatable, tried after --iface" },
  "subnet-file": {
    type: "string",
    description: "filename where env variables (subnet, MTU, ...) will be written to",
    default: "/run/flannel/subnet.env",
  },
  "subnet-lease-renew-margin": {
    type: "int",
    description: "subnet lease renewal margin, in minutes, ranging from 1 to 1439",
    default: 60,
    min: 1,
    max: 1439,
  },
  "subnet-lease-ttl": { type: "duration", description: 'subnet lease time to live ("24h", "30s", or seconds)', default: "24h" },
  "healthz-ip": { type: "string", description: "the IP address for the healthz server to listen on", default: "127.0.0.1" },
  "healthz-port": {
    type: "int",
    description: "the port for the healthz server to listen on (0 to disable)",
    default: 8471,
    min: 0,
    max: 65535,
  },
  "ip-masq": {
    type: "boolean",
    description: "set up IP masquerade for traffic leaving the flannel network (FLANNEL_IPMASQ=true in subnet.env)",
    default: false,
  },
  "ip-masq-fully-random-disable": {
    type: "boolean",
    description: "no --random-fully (nftables: fully-random) on the masquerade rules",
    default: false,
  },
  "iptables-forward-rules": {
    type: "boolean",
    description: "accept traffic from and to the flannel network in the FORWARD chain (Docker sets its policy to DROP)",
    default: true,
  },
  "iptables-resync": {
    type: "int",
    description: "seconds between checks (and repairs) of the traffic rules and the blackhole route",
    default: 5,
    min: 1,
    max: 86400,
  },
  "ip-blackhole-route": {
    type: "boolean",
    description: "keep a blackhole route for our own subnet (dropped instead of sent to the default route)",
    default: false,
  },
  "reconcile-interval": {
    type: "duration",
    description: "how often the kernel state is fully compared with the desired state (the kernel monitor repairs in between)",
    default: "5m",
  },
} as const satisfies FlagSpecs;
