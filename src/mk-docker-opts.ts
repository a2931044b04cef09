// `flannel-bin mk-docker-opts` (also run as `mk-docker-opts.sh` through a symlink): flannel's mk-docker-opts.sh,
// turning subnet.env into Docker daemon options, with the script's options, output and messages to the byte
// (docs/flannel-compat.md §4), so `ExecStartPost=/usr/libexec/flannel/mk-docker-opts.sh -k DOCKER_NETWORK_OPTIONS
// -d /run/flannel/docker` keeps working. Pure parts (arguments, output text, route check) plus a short shell.
import { writeFileSync } from "node:fs";
import { SUBNET_ENV_MAX_BYTES, parseEnvFile, readSmallRegularFile } from "./subnet-env.ts";

export interface MkDockerOptsOptions {
  flannelEnv: string;
  dockerEnv: string;
  combinedKey: string;
  indiv: boolean;
  combined: boolean;
  ipMasq: boolean;
}

export function usage(argv0: string): string {
  return `${argv0} [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options based on flannel env file
OPTIONS:
\t-f\tPath to flannel env file. Defaults to /run/flannel/subnet.env
\t-d\tPath to Docker env file to write to. Defaults to /run/docker_opts.env
\t-i\tOutput each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
\t-c\tOutput combined Docker options into DOCKER_OPTS var
\t-k\tSet the combined options key to this value (default DOCKER_OPTS=)
\t-m\tDo not output --ip-masq (useful for older Docker version)

`;
}

/** getopts "f:d:icmk:?h": clustered flags (-ic), attached (-kKEY) or separate values; stops at the first operand. */
export function parseArgs(argv: string[]): MkDockerOptsOptions | { usage: string } {
  const o: MkDockerOptsOptions = {
    flannelEnv: "/run/flannel/subnet.env",
    dockerEnv: "/run/docker_opts.env",
    combinedKey: "DOCKER_OPTS",
    indiv: false,
    combined: false,
    ipMasq: true,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--") break;
    if (!a.startsWith("-") || a === "-") break;
    for (let j = 1; j < a.length; j++) {
      const c = a[j]!;
      if ("fdk".includes(c)) {
        const v = j + 1 < a.length ? a.slice(j + 1) : argv[++i];
        if (v === undefined) return { usage: `option requires an argument -- ${c}` };
        if (c === "f") o.flannelEnv = v;
        else if (c === "d") o.dockerEnv = v;
        else o.combinedKey = v;
        break;
      }
      if (c === "i") o.indiv = true;
      else if (c === "c") o.combined = true;
      else if (c === "m") o.ipMasq = false;
      else if (c === "h" || c === "?") return { usage: "" };
      else return { usage: `illegal option -- ${c}` };
    }
  }
  if (!o.indiv && !o.combined) o.indiv = o.combined = true;
  return o;
}

/**
 * The Docker env file's text, as the script writes it: each DOCKER_OPT_* variable (sorted by name, as `set` lists
 * them) as NAME="value" with -i, then KEY="<old KEY value and a space, if any> --bip=… --ip-masq=… --mtu=…" with -c.
 * `vars` are the script's variables: the environment, then subnet.env on top (the script sources it).
 */
export function dockerOptsText(o: MkDockerOptsOptions, vars: Record<string, string | undefined>): { text: string } | { error: string } {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(o.combinedKey)) return { error: `invalid combined key: ${o.combinedKey}` };
  const v: Record<string, string | undefined> = { ...vars };
  if (v.FLANNEL_SUBNET) v.DOCKER_OPT_BIP = `--bip=${v.FLANNEL_SUBNET}`;
  if (v.FLANNEL_MTU) v.DOCKER_OPT_MTU = `--mtu=${v.FLANNEL_MTU}`;
  if (v.FLANNEL_IPMASQ && o.ipMasq) {
    // Inverted: when flannel masquerades, Docker must not.
    if (v.FLANNEL_IPMASQ === "true") v.DOCKER_OPT_IPMASQ = "--ip-masq=false";
    else if (v.FLANNEL_IPMASQ === "false") v.DOCKER_OPT_IPMASQ = "--ip-masq=true";
    else return { error: `Invalid value of FLANNEL_IPMASQ: ${v.FLANNEL_IPMASQ}` };
  }
  let combined = v[o.combinedKey] ?? "";
  if (combined) combined = `${combined} `;
  let text = "";
  const names = Object.keys(v)
    .filter((n) => n.includes("DOCKER_OPT_") && v[n] !== undefined)
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  for (const n of names) {
    if (o.indiv) text += `${n}="${v[n]}"\n`;
    combined = `${combined} ${v[n]}`;
  }
  if (o.combined) text += `${o.combinedKey}="${combined}"\n`;
  return { text };
}

/**
 * The script's route check: the subnet (FLANNEL_SUBNET's last octet minus one, e.g. 10.5.72.0/24) found in `ip route
 * show` on a line with "via" means another route already claims it. Returns the offending lines, or null. Same
 * matching as its `grep` (the dots match any character).
 */
export function routeConflict(flannelSubnet: string, ipRouteShow: string): string | null {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)\/(\d+)/.exec(flannelSubnet);
  if (!m) return null;
  const subnet = `${m[1]}.${m[2]}.${m[3]}.${Number(m[4]) - 1}/${m[5]}`;
  const re = new RegExp(subnet); // only digits, dots and a slash; the dots match any character, as in grep
  const lines = ipRouteShow.split("\n").filter((l) => re.test(l) && l.includes("via"));
  return lines.length ? lines.join("\n") : null;
}

/** Runs the command; returns the exit code. */
export function mkDockerOpts(argv: string[], argv0: string, env: Record<string, string | undefined> = process.env): number {
  const o = parseArgs(argv);
  if ("usage" in o) {
    process.stderr.write(`${o.usage ? `${argv0}: ${o.usage}\n` : ""}${usage(argv0)}`);
    return 1;
  }
  const fileText = readSmallRegularFile(o.flannelEnv, SUBNET_ENV_MAX_BYTES);
  const vars = { ...env, ...(fileText === null ? {} : parseEnvFile(fileText)) };
  const r = dockerOptsText(o, vars);
  if ("error" in r) {
    process.stderr.write(`${r.error}\n`);
    return 1;
  }
  try {
    writeFileSync(o.dockerEnv, r.text);
  } catch (e) {
    process.stderr.write(`${argv0}: cannot write ${o.dockerEnv}: ${(e as Error).message}\n`);
    return 1;
  }
  if (vars.FLANNEL_SUBNET) {
    const ip = Bun.spawnSync(["ip", "route", "show"], { stdout: "pipe", stderr: "ignore", env: process.env, timeout: 10_000 });
    const conflict = routeConflict(vars.FLANNEL_SUBNET, ip.stdout.toString());
    if (conflict) {
      process.stderr.write(`Your routing table already contains the subnet: ${conflict}\n`);
      return 1;
    }
  }
  return 0;
}
