// The agent's start-up steps before the data plane, each a function of what it needs (flannel-compat §10 order):
// open the store, wait for the network config, pick the interface, make the backend, take the lease, and (after the
// data plane and the rules) announce it in subnet.env.
import type { Backend } from "../../backends/backend.ts";
import { createBackend } from "../../backends/index.ts";
import { ConfigError, DEFAULT_CONFIG_EXAMPLE, type NetworkConfig, formatNetworkConfigSummary, parseNetworkConfig } from "../config.ts";
import type { RunFlags } from "../flags.ts";
import { type Selection, chooseExternalInterface } from "../iface.ts";
import { formatCIDR } from "../ipmath.ts";
import { type StartupKernel, parseLinks } from "../kernel/kernel-read.ts";
import type { Lease } from "../lease.ts";
import { LeaseKeeper, acquireLeaseFrom } from "../lease-protocol.ts";
import type { SnapshotBox } from "../peer-watch.ts";
import { logger } from "../log.ts";
import { CONFIG_KEY, type Store } from "../store.ts";
import { configPutHint, openStore } from "../store-open.ts";
import { readPreviousSubnet, writeSubnetEnv } from "../subnet-env.ts";
import type { Readiness } from "./readiness.ts";
import { retryEverySecond, settingsAreFatal } from "./retry.ts";

const log = logger("agent");

export type Flags = RunFlags;

/** What every waiting step shares: the stop signal, readiness, and a counter of store errors for /metrics. */
export interface StepContext {
  flags: Flags;
  signal: AbortSignal;
  readiness: Readiness;
  storeError: () => void;
}

/** Opens the store, waiting while it is unreachable; null if stopped first. Bad settings throw (exit 1). */
export async function openStoreStep(c: StepContext): Promise<Store | null> {
  c.readiness.waiting("connecting to the store", "waiting for the store");
  const store = await retryEverySecond(`${c.flags.store} store`, c.signal, () => openStore(c.flags).catch(settingsAreFatal), c.storeError);
  if (store) log.info(`using the ${store.kind} store at ${store.location}`);
  return store;
}

/** Waits for a valid network config in the store (told once how to create it); null if stopped first. */
export async function configStep(c: StepContext, store: Store): Promise<NetworkConfig | null> {
  c.readiness.waiting("network config");
  let told = false;
  const cfg = await retryEverySecond(
    "network config",
    c.signal,
    async () => {
      const kv = await store.get(CONFIG_KEY);
      if (!kv) {
        if (!told)
          log.warn(
            `network config not found in the ${store.kind} store (${store.location}); create it with:\n  ${configPutHint(c.flags, DEFAULT_CONFIG_EXAMPLE)}\nretrying every second`,
          );
        told = true;
        return null;
      }
      try {
        return parseNetworkConfig(new TextDecoder().decode(kv.value));
      } catch (e) {
        if (e instanceof ConfigError) throw new Error(`invalid network config in the ${store.kind} store: ${e.message}`);
        throw e;
      }
    },
    c.storeError,
  );
  if (cfg) log.info(`network config: ${formatNetworkConfigSummary(cfg)}`);
  return cfg;
}

/** The external interface and public IP (flannel-compat §9). Nothing found throws (exit 1), as flanneld. */
export async function interfaceStep(f: Flags, kernel: StartupKernel): Promise<Selection> {
  const sel = await chooseExternalInterface({
    read: kernel,
    iface: f.iface,
    ifaceRegex: f["iface-regex"],
    ifaceCanReach: f["iface-can-reach"] || undefined,
    publicIP: f["public-ip"] || undefined,
  });
  for (const n of sel.notes) log.info(n);
  log.info(`using interface ${sel.iface.name} (mtu ${sel.iface.mtu}) with public IP ${sel.publicIP}`);
  return sel;
}

/** The backend, told which links the kernel has: a compatible vxlan device there (ours, or flanneld's) is adopted. */
export async function backendStep(cfg: NetworkConfig, sel: Selection, kernel: StartupKernel): Promise<Backend> {
  return createBackend({ config: cfg, extIface: sel.iface, publicIP: sel.publicIP, existingLinks: parseLinks(await kernel.links) });
}

/**
 * Takes (or reuses: the previous subnet from subnet.env) a lease, retrying lost races and "out of subnets";
 * returns it with its keeper, the one owner of renewal and re-creation, and the list it decided on (for the peer
 * watch). null if stopped first.
 */
export async function leaseStep(
  c: StepContext,
  store: Store,
  cfg: NetworkConfig,
  backend: Backend,
): Promise<{ lease: Lease; keeper: LeaseKeeper; initial: SnapshotBox } | null> {
  c.readiness.waiting("lease");
  const ttlMs = c.flags["subnet-lease-ttl"];
  const marginMs = c.flags["subnet-lease-renew-margin"] * 60_000;
  const prev = readPreviousSubnet(c.flags["subnet-file"]);
  const got = await retryEverySecond(
    "acquiring a lease",
    c.signal,
    () => acquireLeaseFrom(store, cfg, backend.leaseAttrs(), { previousSubnet: prev.subnet, ttlMs }),
    c.storeError,
  );
  if (!got) return null;
  const { lease, snapshot } = got;
  log.info(`holding lease ${formatCIDR(lease.subnet)}${lease.expiresAt === null ? " (reserved)" : ""}`);
  return { lease, initial: { snapshot }, keeper: new LeaseKeeper(store, lease, { ttlMs, marginMs, onError: c.storeError }) };
}

/**
 * Writes subnet.env. As flanneld: a file that cannot be written is an error in the log and holds readiness back,
 * but the data plane keeps working.
 */
export function announceStep(c: StepContext, cfg: NetworkConfig, lease: Lease, backend: Backend): void {
  const file = c.flags["subnet-file"];
  try {
    writeSubnetEnv(file, { network: cfg.network, subnet: lease.subnet, mtu: backend.mtu, ipMasq: c.flags["ip-masq"] === true });
    log.info(`wrote ${file}`);
  } catch (e) {
    log.error(`could not write ${file}: ${(e as Error).message}`);
    c.readiness.block("subnet.env", `writing ${file} failed`);
  }
}
