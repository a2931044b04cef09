// Command-line flags the way flanneld users type them: Go's flag syntax (`-flag=v`, `-flag v`, `--flag=v`,
// `--flag v`, booleans as `--flag` or `--flag=false`) and every flag also as FLANNELD_<NAME> in the environment,
// applied only when the flag is not on the command line. Unknown flags and bad values are errors, never ignored.
//
// One spec per flag (type, default, accepted values, range, help text, value placeholder); the environment name,
// the parsed value's TypeScript type, the help screen (help.ts) and the error messages all derive from it, so adding
// a flag is one entry in one of the tables at the bottom.

import type { ArgsDef } from "citty";

export type FlagType = "string" | "boolean" | "int" | "duration" | "list";

export interface FlagSpec {
  type: FlagType;
  description: string;
  default?: string | number | boolean;
  /** Allowed values for a string flag. */
  choices?: readonly string[];
  /** Choices match case-insensitively (glog's level names); the value is the choice's own spelling. */
  ignoreCase?: boolean;
  min?: number;
  max?: number;
  /** What goes in the value, for help ("URL,...", "FILE"); derived from the type when absent. */
  placeholder?: string;
  /** A flanneld flag flannel-bin does not implement yet: accepted by name, and using it is an error saying so. */
  unsupported?: string;
}

export type FlagSpecs = Record<string, FlagSpec>;
export type FlagValue = string | number | boolean | string[] | undefined;
export type ParsedFlags<V = Record<string, FlagValue>> = { values: V; positionals: string[] };

/** The TypeScript type of one flag's parsed value. Durations are milliseconds. */
type ValueOf<S extends FlagSpec> = S["type"] extends "boolean"
  ? boolean
  : S["type"] extends "int" | "duration"
    ? number
    : S["type"] extends "list"
      ? string[]
      : S extends { choices: readonly (infer C)[] }
        ? C
        : string;

/** Parsed values of a spec table: a flag with a default is always set, others may be undefined. */
export type FlagValues<S extends FlagSpecs> = {
  [K in keyof S]: S[K] extends { default: string | number | boolean } ? ValueOf<S[K]> : ValueOf<S[K]> | undefined;
};

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

/** The accepted values of a flag, in words, for error messages and help. */
export function acceptedValues(spec: FlagSpec): string {
  switch (spec.type) {
    case "boolean":
      return "true or false";
    case "int":
      if (spec.min !== undefined && spec.max !== undefined) return `a whole number from ${spec.min} to ${spec.max}`;
      if (spec.min !== undefined) return `a whole number, at least ${spec.min}`;
      return "a whole number";
    case "duration":
      return 'a duration such as "24h", "90s" or a number of seconds';
    case "list":
      return "a comma-separated list";
    case "string":
      return spec.choices ? `one of ${spec.choices.join(", ")}` : "a value";
  }
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
      if (!/^-?\d+$/.test(raw)) throw bad(`expected ${acceptedValues(spec)}`);
      const n = Number(raw);
      if (spec.min !== undefined && n < spec.min) throw bad(`must be at least ${spec.min} (${acceptedValues(spec)})`);
      if (spec.max !== undefined && n > spec.max) throw bad(`must be at most ${spec.max} (${acceptedValues(spec)})`);
      return n;
    }
    case "duration": {
      const ms = parseDuration(raw);
      if (ms === null || ms <= 0) throw bad(`expected ${acceptedValues(spec)}`);
      return ms;
    }
    case "list":
      return raw.split(",").filter((x) => x !== "");
    case "string": {
      if (!spec.choices) return raw;
      const match = spec.ignoreCase ? spec.choices.find((c) => c.toLowerCase() === raw.toLowerCase()) : spec.choices.find((c) => c === raw);
      if (match === undefined) throw bad(`expected ${acceptedValues(spec)}`);
      return match;
    }
  }
}

function defaultValue(spec: FlagSpec): FlagValue {
  if (spec.default === undefined) return undefined;
  if (spec.type === "duration") return parseDuration(String(spec.default))!;
  if (spec.type === "list") return String(spec.default).split(",");
  return spec.default;
}

export function parseFlags<S extends FlagSpecs>(
  argv: string[],
  specs: S,
  env: Record<string, string | undefined> = process.env,
  opts: { storeFallback?: string } = {},
): ParsedFlags<FlagValues<S>> {
  const values: Record<string, FlagValue> = {};
  const positionals: string[] = [];
  const given = new Set<string>();
  const refuse = (name: string, spec: FlagSpec, from: string) => {
    if (spec.unsupported !== undefined)
      throw new FlagError(
        `${from} is a flanneld flag that flannel-bin does not support yet${spec.unsupported ? `: ${spec.unsupported}` : ""}`,
      );
    return name;
  };
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
    refuse(name, spec, `--${name}`);
    let raw: string;
    if (eq >= 0) raw = body.slice(eq + 1);
    else if (spec.type === "boolean")
      raw = "true"; // Go: a bare boolean flag is true; `--x false` is not a value
    else {
      const next = argv[i + 1];
      if (next === undefined) throw new FlagError(`flag needs an argument: ${arg} (${acceptedValues(spec)})`);
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
      refuse(name, spec, envName(name));
      values[name] = convert(spec, e, envName(name));
      given.add(name);
    } else if (spec.default !== undefined) values[name] = defaultValue(spec);
  }
  if ("store" in specs && !given.has("store")) values.store = inferStore(given, opts.storeFallback);
  return { values: values as FlagValues<S>, positionals };
}

/**
 * Without --store, the store follows the flags given: flanneld users write `-etcd-endpoints=… -etcd-prefix=…`
 * and mean etcd; NATS flags mean NATS; otherwise the embedded SQLite file.
 */
function inferStore(given: Set<string>, fallback = "sqlite"): string {
  const any = (p: string) => [...given].some((n) => n.startsWith(p));
  if (any("etcd-")) return "etcd";
  if (any("nats-")) return "nats";
  if (any("sqlite-")) return "sqlite";
  return fallback;
}

/** The specs behind each citty argument table, so help.ts renders the real thing (groups, placeholders). */
export const specsOfArgs = new WeakMap<ArgsDef, FlagSpecs>();

/** citty argument definitions (citty only dispatches; help and parsing come from the specs). */
export function cittyArgs(specs: FlagSpecs): ArgsDef {
  const out: ArgsDef = {};
  for (const [name, s] of Object.entries(specs)) {
    const description = `${s.description} [${envName(name)}]`;
    out[name] =
      s.type === "boolean"
        ? { type: "boolean", description }
        : { type: "string", description, ...(s.default !== undefined ? { default: String(s.default) } : {}) };
  }
  specsOfArgs.set(out, specs);
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

/** The agent's own flags (help: "Run flags"). */
const AGENT_FLAGS = {
  ...STORE_FLAGS,
  "public-ip": { type: "string", description: "IP accessible by other nodes for inter-host communication (default: the interface's IP)" },
  iface: { type: "list", description: "interface to use (IP or name) for inter-host communication; repeatable, tried in order" },
  "iface-regex": { type: "list", description: "regex of interface IPs or names; repeatable, tried after --iface" },
  "iface-can-reach": {
    type: "string",
    placeholder: "IP",
    description: "use the interface (and source address) of the route to this IP; tried after --iface and --iface-regex",
  },
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
    description:
      "seconds between checks of the traffic rules where changes cannot be watched (iptables-legacy); elsewhere a change is checked at once, at most one check per period on a busy host",
    default: 5,
    min: 1,
    max: 86400,
  },
  "ip-blackhole-route": {
    type: "boolean",
    description: "keep a blackhole route for our own subnet (dropped instead of sent to the default route)",
    default: false,
  },
  "route-nexthops": {
    type: "string",
    description:
      "peer routes through nexthop objects: auto (where the kernel has them, Linux >= 5.3: 10,000 routes cost 0.4 s of kernel time instead of 3.3 s), on (required), off (plain gateway routes, as flanneld writes them)",
    choices: ["auto", "on", "off"],
    default: "auto",
  },
  "reconcile-interval": {
    type: "duration",
    description:
      "how often the kernel state and the traffic rules are fully compared with the desired state (the monitors repair in between)",
    default: "5m",
  },
} as const satisfies FlagSpecs;

/**
 * Logging, with the klog/glog flags of the flanneld releases the setup guides were written for (log.ts says what
 * each does here). Every one is accepted so that flanneld's command lines work unchanged.
 */
export const LOG_FLAGS = {
  v: {
    type: "int",
    placeholder: "N",
    description: "klog verbosity: 2 or more adds debug lines, 4 or more trace lines",
    default: 0,
    min: 0,
    max: 10,
  },
  vmodule: { type: "string", placeholder: "PATTERN=N,...", description: "klog per-file verbosity: accepted, no effect (one notice)" },
  log_backtrace_at: {
    type: "string",
    placeholder: "FILE:LINE",
    description: "klog stack trace at a log line: accepted, no effect (one notice)",
  },
  logtostderr: {
    type: "boolean",
    description: "log to standard error (false: to a file in --log_dir, errors also to stderr)",
    default: true,
  },
  alsologtostderr: { type: "boolean", description: "with --logtostderr=false: log to standard error as well as the file", default: false },
  log_dir: {
    type: "string",
    placeholder: "DIR",
    description: "with --logtostderr=false: append log lines to DIR/flanneld.log (default /tmp, as glog)",
  },
  stderrthreshold: {
    type: "string",
    placeholder: "LEVEL",
    description: "with --logtostderr=false: lines at this level or above also go to stderr (0-3 or INFO, WARNING, ERROR, FATAL)",
    default: "2",
    choices: ["0", "1", "2", "3", "INFO", "WARNING", "ERROR", "FATAL"],
    ignoreCase: true,
  },
} as const satisfies FlagSpecs;

/**
 * flanneld flags (docs/flannel-compat.md §8) without an implementation yet: known by name so that using one says
 * so instead of "unknown flag". A flag implemented later is defined in AGENT_FLAGS, which takes precedence.
 */
const NOT_YET: FlagSpecs = {
  "public-ipv6": {
    type: "string",
    placeholder: "IP",
    description: "IPv6 accessible by other nodes",
    unsupported: "the data plane is IPv4",
  },
  "kube-subnet-mgr": { type: "boolean", description: "use the Kubernetes API instead of a store", unsupported: "use etcd, NATS or SQLite" },
  "kube-api-url": { type: "string", placeholder: "URL", description: "Kubernetes API server URL", unsupported: "" },
  "kubeconfig-file": { type: "string", placeholder: "FILE", description: "kubeconfig file", unsupported: "" },
  "kube-annotation-prefix": { type: "string", description: "Kubernetes node annotation prefix", unsupported: "" },
  "net-config-path": { type: "string", placeholder: "FILE", description: "network config file (Kubernetes mode)", unsupported: "" },
  "set-node-network-unavailable": { type: "boolean", description: "set the node's NetworkUnavailable condition", unsupported: "" },
};

/** Every flag of `flannel-bin run` (and of `flanneld`). */
export const RUN_FLAGS = { ...NOT_YET, ...AGENT_FLAGS, ...LOG_FLAGS } as const satisfies FlagSpecs;
export type RunFlags = FlagValues<typeof RUN_FLAGS>;

/** Help sections of `run`: a flag shows in the first section that names it. */
export const RUN_HELP_GROUPS: [title: string, specs: FlagSpecs][] = [
  ["Store flags", STORE_FLAGS],
  ["Run flags", AGENT_FLAGS],
  ["Logging flags", LOG_FLAGS],
  ["flanneld flags not supported yet (accepted by name; using one is an error)", NOT_YET],
];
