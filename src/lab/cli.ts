// `flannel-bin lab up|status|down`: the multi-host lab from the command line. Exit code 1 when setup fails or any
// container pair cannot ping the other.
import { defineCommand } from "citty";
import { consola } from "consola";
import { type LabBackend, type LabStoreKind, formatLabReport, labDown, labStatus, labUp } from "./lab.ts";

const common = {
  name: { type: "string", description: "lab name: namespace prefix and state dir name", default: "flab" },
  "state-dir": { type: "string", description: "state directory (default /run/flannel-bin-lab/<name>)" },
} as const;

/** Runs a lab action; prints a LabError (or any error) as one clean message and sets exit code 1. */
async function guarded(f: () => Promise<boolean>): Promise<void> {
  try {
    if (!(await f())) process.exitCode = 1;
  } catch (e) {
    consola.error(e instanceof Error ? e.message : String(e));
    process.exitCode = 1;
  }
}

const up = defineCommand({
  meta: { name: "up", description: "create hosts (network namespaces) on one underlay, start an agent in each, ping all container pairs" },
  args: {
    ...common,
    hosts: { type: "string", description: "number of hosts", default: "3" },
    backend: { type: "string", description: "vxlan | host-gw", default: "vxlan" },
    store: { type: "string", description: "sqlite | etcd | nats (etcd/nats: a server is started in the underlay namespace)", default: "sqlite" },
    network: { type: "string", description: "flannel Network", default: "10.5.0.0/16" },
    binary: { type: "string", description: "agent binary (default: this executable, or dist/flannel-bin)" },
    "store-args": { type: "string", description: "store flags of a server you run yourself (reachable from the lab namespaces), e.g. \"--etcd-endpoints http://…\"" },
    "agent-args": { type: "string", description: "extra flags for every agent, space-separated" },
  },
  run: ({ args }) =>
    guarded(async () => {
      const hosts = Number(args.hosts);
      const split = (v: string | undefined) => (v ? v.trim().split(/\s+/).filter((x) => x !== "") : undefined);
      const report = await labUp({
        name: args.name,
        stateDir: args["state-dir"],
        hosts,
        backend: args.backend as LabBackend,
        store: args.store as LabStoreKind,
        network: args.network,
        binary: args.binary,
        storeArgs: split(args["store-args"]),
        agentArgs: split(args["agent-args"]),
      });
      console.log(formatLabReport(report));
      return report.ok;
    }),
});

const status = defineCommand({
  meta: { name: "status", description: "hosts, subnets, agent alive/ready, pair reachability" },
  args: common,
  run: ({ args }) =>
    guarded(async () => {
      const report = await labStatus({ name: args.name, stateDir: args["state-dir"] });
      console.log(formatLabReport(report));
      return report.ok;
    }),
});

const down = defineCommand({
  meta: { name: "down", description: "stop the lab's agents and servers and delete exactly the namespaces and files it created" },
  args: common,
  run: ({ args }) =>
    guarded(async () => {
      const { removed, errors } = await labDown({ name: args.name, stateDir: args["state-dir"] });
      if (removed.length === 0 && errors.length === 0) console.log(`no lab ${args.name}: nothing to remove`);
      for (const r of removed) console.log(`removed ${r}`);
      for (const e of errors) consola.error(e);
      return errors.length === 0;
    }),
});

export const labCommand = defineCommand({
  meta: { name: "lab", description: "multi-host lab in network namespaces (needs root)" },
  subCommands: { up, status, down },
});
