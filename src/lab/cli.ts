// `flannel-bin lab up|status|down`: the multi-host lab from the command line. Exit code 1 when setup fails or any
// container pair cannot ping the other.
import { defineCommand } from "citty";
import { consola } from "../log.ts";
import { FlagError, type FlagSpecs, type FlagValue, cittyArgs, parseFlags } from "../flags.ts";
import { type LabBackend, type LabReport, type LabStoreKind, MAX_HOSTS, formatLabReport, labDown, labStatus, labUp } from "./lab.ts";

// Parsed by flags.ts like every other command: Go spellings, FLANNELD_*, and an unknown flag or bad value is exit 2.
const COMMON = {
  name: { type: "string", description: "lab name: namespace prefix and state dir name", default: "flab" },
  "state-dir": { type: "string", description: "state directory (default /run/flannel-bin-lab/<name>)" },
} as const satisfies FlagSpecs;

const UP = {
  ...COMMON,
  hosts: { type: "int", description: "number of hosts", default: 3, min: 1, max: MAX_HOSTS },
  backend: { type: "string", description: "vxlan | host-gw", default: "vxlan", choices: ["vxlan", "host-gw"] },
  store: {
    type: "string",
    description: "sqlite | etcd | nats (etcd/nats: a server is started in the underlay namespace)",
    default: "sqlite",
    choices: ["sqlite", "etcd", "nats"],
  },
  network: { type: "string", description: "flannel Network", default: "10.5.0.0/16" },
  binary: { type: "string", description: "agent binary (default: this executable, or dist/flannel-bin)" },
  "store-args": {
    type: "string",
    description: 'store flags of a server you run yourself (reachable from the lab namespaces), e.g. "--etcd-endpoints http://…"',
  },
  "agent-args": { type: "string", description: "extra flags for every agent, space-separated" },
} as const satisfies FlagSpecs;

/** Parses the lab command's flags; runs the action; a failed setup or unreachable pair is exit code 1. */
async function guarded(rawArgs: string[], specs: FlagSpecs, f: (v: Record<string, FlagValue>) => Promise<boolean>): Promise<void> {
  const { values, positionals } = parseFlags(rawArgs, specs); // FlagError: exit 2, from main
  if (positionals.length) throw new FlagError(`unexpected argument ${JSON.stringify(positionals[0])}`);
  try {
    if (!(await f(values))) process.exitCode = 1;
  } catch (e) {
    consola.error(e instanceof Error ? e.message : String(e));
    process.exitCode = 1;
  }
}

const str = (v: FlagValue): string | undefined => (typeof v === "string" && v !== "" ? v : undefined);
const words = (v: FlagValue) => str(v)?.trim().split(/\s+/);

function printReport(report: LabReport): boolean {
  console.log(formatLabReport(report));
  return report.ok;
}

const up = defineCommand({
  meta: { name: "up", description: "create hosts (network namespaces) on one underlay, start an agent in each, ping all container pairs" },
  args: cittyArgs(UP),
  run: ({ rawArgs }) =>
    guarded(rawArgs, UP, async (v) =>
      printReport(
        await labUp({
          name: str(v.name),
          stateDir: str(v["state-dir"]),
          hosts: Number(v.hosts),
          backend: v.backend as LabBackend,
          store: v.store as LabStoreKind,
          network: str(v.network),
          binary: str(v.binary),
          storeArgs: words(v["store-args"]),
          agentArgs: words(v["agent-args"]),
        }),
      ),
    ),
});

const status = defineCommand({
  meta: { name: "status", description: "hosts, subnets, agent alive/ready, pair reachability" },
  args: cittyArgs(COMMON),
  run: ({ rawArgs }) =>
    guarded(rawArgs, COMMON, async (v) => printReport(await labStatus({ name: str(v.name), stateDir: str(v["state-dir"]) }))),
});

const down = defineCommand({
  meta: { name: "down", description: "stop the lab's agents and servers and delete exactly the namespaces and files it created" },
  args: cittyArgs(COMMON),
  run: ({ rawArgs }) =>
    guarded(rawArgs, COMMON, async (v) => {
      const { removed, errors } = await labDown({ name: str(v.name), stateDir: str(v["state-dir"]) });
      if (removed.length === 0 && errors.length === 0) console.log(`no lab ${v.name}: nothing to remove`);
      for (const r of removed) console.log(`removed ${r}`);
      for (const e of errors) consola.error(e);
      return errors.length === 0;
    }),
});

export const labCommand = defineCommand({
  meta: { name: "lab", description: "multi-host lab in network namespaces (needs root)" },
  subCommands: { up, status, down },
});
