// The command line: run, config put/get, leases, lab, version. citty gives the command tree and --help;
// flags.ts does the strict, flanneld-compatible parsing of each command's own arguments.

import { readFileSync } from "node:fs";
import { defineCommand, type CommandDef } from "citty";
import { ConfigError, parseNetworkConfig } from "./config.ts";
import { FlagError, type FlagSpecs, RUN_FLAGS, STORE_FLAGS, cittyArgs, parseFlags } from "./flags.ts";
import { applyLogFlags, closeLogFile, consola } from "./log.ts";
import { formatCIDR, tryParseCIDR } from "./ipmath.ts";
import { subnetKey } from "./lease.ts";
import { listLeases } from "./lease-protocol.ts";
import { CONFIG_KEY, type Store } from "./store.ts";
import { openStore } from "./store-open.ts";
import { runAgent } from "./agent.ts";

/** How the binary was invoked (main.ts sets it): a link named flanneld is flanneld, also in its defaults. */
export const invokedAs = { flanneld: false };

declare const FLANNEL_BIN_VERSION: string | undefined;
export const VERSION: string = typeof FLANNEL_BIN_VERSION === "string" ? FLANNEL_BIN_VERSION : "0.1.0-dev";

async function withStore<T>(f: Record<string, unknown>, fn: (s: Store) => Promise<T>, opts: { existing?: boolean } = {}): Promise<T> {
  const store = await openStore(f as never, opts);
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

const run = defineCommand({
  meta: { name: "run", description: "run the agent: take a subnet lease, write subnet.env, program routes to every peer" },
  args: cittyArgs(RUN_FLAGS),
  async run({ rawArgs }) {
    // Run as flanneld, no store flags mean flanneld's own default: etcd at 127.0.0.1.
    const { values, positionals } = parseFlags(rawArgs, RUN_FLAGS, process.env, { storeFallback: invokedAs.flanneld ? "etcd" : "sqlite" });
    if (positionals.length) throw new FlagError(`run takes no arguments, got ${JSON.stringify(positionals.join(" "))}`);
    applyLogFlags(values);
    const code = await runAgent(values);
    closeLogFile();
    // Exit at once: nothing the agent left behind (a retry timer, a half-closed socket) may keep the process.
    process.exit(code);
  },
});

const CONFIG_PUT_FLAGS = {
  ...STORE_FLAGS,
  file: { type: "string", description: "read the config JSON from this file" },
} as const satisfies FlagSpecs;

const configPut = defineCommand({
  meta: { name: "put", description: "store the network config (validated first): config put '<json>' or --file F" },
  args: cittyArgs(CONFIG_PUT_FLAGS),
  async run({ rawArgs }) {
    const { values, positionals } = parseFlags(rawArgs, CONFIG_PUT_FLAGS);
    const text = values.file ? readFileSync(String(values.file), "utf8") : positionals[0];
    if (text === undefined || positionals.length > (values.file ? 0 : 1))
      throw new FlagError("usage: flannel-bin config put '<json>'  or  flannel-bin config put --file net-conf.json");
    try {
      parseNetworkConfig(text);
    } catch (e) {
      if (e instanceof ConfigError) throw new FlagError(`invalid network config: ${e.message}`);
      throw e;
    }
    await withStore(values, async (store) => {
      const bytes = new TextEncoder().encode(text.trim());
      for (let i = 0; i < 10; i++) {
        const cur = await store.get(CONFIG_KEY);
        const ok = cur ? (await store.update(CONFIG_KEY, bytes, cur.revision)) !== null : (await store.create(CONFIG_KEY, bytes)) !== null;
        if (ok) return consola.success(`network config stored in the ${store.kind} store (${store.location})`);
      }
      throw new Error("config changed concurrently 10 times; try again");
    });
  },
});

const configGet = defineCommand({
  meta: { name: "get", description: "print the network config" },
  args: cittyArgs(STORE_FLAGS),
  async run({ rawArgs }) {
    const { values } = parseFlags(rawArgs, STORE_FLAGS);
    await withStore(
      values,
      async (store) => {
        const kv = await store.get(CONFIG_KEY);
        if (!kv) throw new Error(`no network config in the ${store.kind} store (${store.location})`);
        process.stdout.write(`${new TextDecoder().decode(kv.value)}\n`);
      },
      { existing: true },
    );
  },
});

const config = defineCommand({
  meta: { name: "config", description: "read or write the network config" },
  subCommands: { put: configPut, get: configGet },
});

const LEASES_FLAGS = { ...STORE_FLAGS, json: { type: "boolean", description: "print JSON" } } as const satisfies FlagSpecs;

const leases = defineCommand({
  meta: { name: "leases", description: "list subnet leases (or: leases delete <subnet>)" },
  args: cittyArgs(LEASES_FLAGS),
  async run({ rawArgs }) {
    const { values, positionals } = parseFlags(rawArgs, LEASES_FLAGS);
    await withStore(
      values,
      async (store) => {
        if (positionals[0] === "delete") {
          const net = tryParseCIDR(positionals[1] ?? "");
          if (net?.family !== 4) throw new FlagError("usage: flannel-bin leases delete <a.b.c.d/len>");
          const key = subnetKey(net);
          const kv = await store.get(key);
          if (!kv || !(await store.delete(key, kv.revision))) throw new Error(`no lease ${formatCIDR(net)} (or it changed meanwhile)`);
          return consola.success(`deleted lease ${formatCIDR(net)}`);
        }
        if (positionals.length) throw new FlagError(`unknown leases argument ${JSON.stringify(positionals[0])}`);
        const snap = await listLeases(store);
        const rows = snap.leases.map((l) => ({
          subnet: formatCIDR(l.subnet),
          publicIP: l.attrs.publicIP,
          backend: l.attrs.backendType,
          backendData: l.attrs.backendData ?? null,
          expires: l.expiresAt === null ? null : new Date(l.expiresAt).toISOString(),
          reservation: l.expiresAt === null,
        }));
        if (values.json) return void process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
        const table = [
          ["SUBNET", "PUBLIC IP", "BACKEND", "EXPIRES", "RESERVATION"],
          ...rows.map((r) => [r.subnet, r.publicIP, r.backend, r.expires ?? "never", r.reservation ? "yes" : "no"]),
        ];
        const widths = table[0]!.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
        for (const r of table)
          process.stdout.write(
            `${r
              .map((c, i) => c.padEnd(widths[i]!))
              .join("  ")
              .trimEnd()}\n`,
          );
        if (snap.corrupt.length)
          process.stdout.write(`(${snap.corrupt.length} corrupt record(s) skipped: ${snap.corrupt.map(formatCIDR).join(", ")})\n`);
      },
      { existing: true },
    );
  },
});

const version = defineCommand({
  meta: { name: "version", description: "print the version" },
  run() {
    process.stdout.write(`${VERSION}\n`);
  },
});

export const main: CommandDef = defineCommand({
  meta: {
    name: "flannel-bin",
    version: VERSION,
    description: "flannel's job in one binary: subnet leases over etcd, NATS or SQLite; host-gw and vxlan",
  },
  // The lab is loaded only when asked for (its modules and the Node built-ins they use are not an agent's start).
  subCommands: { run, config, leases, lab: () => import("./lab/cli.ts").then((m) => m.labCommand), version },
});
