// The multi-host lab: N "hosts" (network namespaces) on one underlay bridge, a flannel-bin agent in each, and a
// "container" namespace behind each host's cni0 bridge addressed from subnet.env, exactly as Docker's --bip/--mtu
// would. Then every container pings every other one. This file is the lab's life cycle (up, status, down, and adding,
// stopping and restarting a host); the parts live beside it: state.ts (lab.json), topology.ts (namespaces, underlay),
// store-setup.ts, agents.ts, containers.ts, ping.ts, report.ts.
//
// Topology (name "flab"):
//   flab-ul: br0 192.0.2.1/24 (TEST-NET-1), etcd/nats server if any
//   flab-hI: eth0 192.0.2.(10+I)/24, default via 192.0.2.1; agent; cni0 = FLANNEL_SUBNET (.1), mtu FLANNEL_MTU
//   flab-cI: eth0 = .2 of the host's subnet, default via .1
// The root namespace gets no address, route or link.
import { logger } from "../log.ts";
import { existsSync, mkdirSync, rmSync } from "node:fs";
import { resolve } from "node:path";
import { agentAlive, defaultBinary, startAgent, waitAgentReady } from "./agents.ts";
import { addContainer } from "./containers.ts";
import { netnsDel, netnsExists, stopProcess } from "./netns.ts";
import { startLabServer } from "./servers.ts";
import { type LabReport, labReport } from "./report.ts";
import {
  type LabAgentKind,
  type LabBackend,
  LabError,
  type LabHost,
  type LabState,
  type LabStoreKind,
  MAX_HOSTS,
  containerName,
  findHost,
  hostName,
  labName,
  labStateDir,
  loadLabState,
  readLabState,
  recordPath,
  requireRoot,
  saveState,
  stateFile,
} from "./state.ts";
import { putNetworkConfig, setupStore } from "./store-setup.ts";
import { UNDERLAY_GATEWAY, UNDERLAY_PREFIX, addHostNamespace, addUnderlay } from "./topology.ts";

// The lab's public surface, for the CLI and the tests: one import.
export { defaultBinary, readSubnetEnv } from "./agents.ts";
export { type PairReport, pingAllPairs, pingFrom } from "./ping.ts";
export { type HostReport, type LabReport, formatLabReport } from "./report.ts";
export {
  type LabBackend,
  LabError,
  type LabHost,
  type LabState,
  type LabStoreKind,
  MAX_HOSTS,
  labStateDir,
  readLabState,
} from "./state.ts";
export { UNDERLAY_GATEWAY } from "./topology.ts";

const log = logger("lab");

export interface LabOptions {
  /** Namespace prefix (default "flab"). */
  name?: string;
  /** Number of hosts (default 3). */
  hosts?: number;
  backend?: LabBackend;
  store?: LabStoreKind;
  /** Agent binary (default: this executable when compiled, else dist/flannel-bin). */
  binary?: string;
  /** Default /run/flannel-bin-lab/<name>. */
  stateDir?: string;
  /** Flannel Network (default 10.5.0.0/16). */
  network?: string;
  /** Store flags for a server the user runs (it must be reachable from inside the lab namespaces). */
  storeArgs?: string[];
  /** Extra flags for every agent (e.g. ["--subnet-lease-ttl", "30s"]). */
  agentArgs?: string[];
  /** Extra Backend options of the network config, e.g. { DirectRouting: true } or { VNI: 7, Port: 4789 }. */
  backendOptions?: Record<string, unknown>;
  /** Only build namespaces and the underlay (no store, agents, containers, pings): for topology tests. */
  topologyOnly?: boolean;
  /** With topologyOnly: skip the underlay pings of the report (the join-storm benchmark's 50 hosts = 2,450 pairs). */
  noPings?: boolean;
  /** Bound for each agent's readiness (default 30 s). */
  readyTimeoutMs?: number;
  /** Key prefix on the lab's etcd (flannel's -etcd-prefix), for agents, flanneld and `config put`. */
  etcdPrefix?: string;
  /** nats-server binary for the lab's NATS server (default: nats-server on PATH), e.g. a current one. */
  natsServer?: string;
  /** Mixed lab: these hosts (1-based) run the real flanneld instead of flannel-bin (etcd store only). */
  flanneld?: { binary: string; hosts: number[]; args?: string[] };
}

/** Brings the whole lab up and pings all pairs. Throws on setup failure (state kept for labDown); report.ok says pings. */
export async function labUp(opts: LabOptions = {}): Promise<LabReport> {
  requireRoot();
  const name = labName(opts);
  const nHosts = opts.hosts ?? 3;
  if (!Number.isInteger(nHosts) || nHosts < 1 || nHosts > MAX_HOSTS) throw new LabError(`--hosts must be 1-${MAX_HOSTS}, got ${nHosts}`);
  const backend = opts.backend ?? "vxlan";
  if (backend !== "vxlan" && backend !== "host-gw")
    throw new LabError(`--backend must be vxlan or host-gw, got ${JSON.stringify(backend)}`);
  const store = opts.store ?? "sqlite";
  if (!["sqlite", "etcd", "nats"].includes(store)) throw new LabError(`--store must be sqlite, etcd or nats, got ${JSON.stringify(store)}`);
  if (opts.flanneld) {
    if (store !== "etcd") throw new LabError(`flanneld hosts need --store etcd, got ${store}`);
    const bad = opts.flanneld.hosts.find((i) => !Number.isInteger(i) || i < 1 || i > nHosts);
    if (bad !== undefined) throw new LabError(`flanneld host ${bad} is not one of the lab's hosts 1-${nHosts}`);
    if (!existsSync(opts.flanneld.binary))
      throw new LabError(`flanneld binary not found: ${opts.flanneld.binary} (scripts/setup.sh builds it)`);
  }
  const stateDir = labStateDir(opts);
  if (existsSync(stateFile(stateDir)))
    throw new LabError(`lab ${name} already exists (${stateFile(stateDir)}); run \`flannel-bin lab down --name ${name}\` first`);
  const binary = resolve(opts.binary ?? defaultBinary());
  if (!opts.topologyOnly && !existsSync(binary))
    throw new LabError(`agent binary not found: ${binary} (run \`bun run build\` or pass --binary)`);

  // Never adopt namespaces we did not make: refuse if any of our names is taken.
  const wanted = [`${name}-ul`];
  for (let i = 1; i <= nHosts; i++) wanted.push(`${name}-h${i}`, `${name}-c${i}`);
  for (const ns of wanted)
    if (await netnsExists(ns))
      throw new LabError(`network namespace ${ns} already exists and is not recorded by a lab; remove it or pick another --name`);

  const createdStateDir = !existsSync(stateDir);
  mkdirSync(stateDir, { recursive: true, mode: 0o755 });
  const s: LabState = {
    version: 1,
    name,
    stateDir,
    createdStateDir,
    backend,
    store,
    network: opts.network ?? "10.5.0.0/16",
    binary,
    storeFlags: [],
    agentArgs: opts.agentArgs ?? [],
    ...(opts.flanneld && { flanneld: { binary: resolve(opts.flanneld.binary), args: opts.flanneld.args ?? [] } }),
    underlay: `${name}-ul`,
    namespaces: [],
    hosts: [],
    servers: [],
    paths: [],
  };
  recordPath(s, stateFile(stateDir));
  saveState(s);

  try {
    log.info(`building underlay ${s.underlay} (br0 ${UNDERLAY_GATEWAY}/${UNDERLAY_PREFIX}) and ${nHosts} hosts`);
    await addUnderlay(s);
    for (let i = 1; i <= nHosts; i++) {
      const h = await addHostNamespace(s, i);
      if (opts.flanneld?.hosts.includes(i)) h.agent = "flanneld";
    }
    saveState(s);
    if (opts.topologyOnly) return await labReport(s, { pingCount: 1, pings: !opts.noPings });

    await setupStore(s, opts);
    await putNetworkConfig(s, opts.backendOptions);
    // Start all agents first, then wait: they come up in parallel.
    for (const h of s.hosts) startAgent(s, h);
    await Promise.all(s.hosts.map((h) => waitAgentReady(h, opts.readyTimeoutMs)));
    for (const h of s.hosts) await addContainer(s, h);
    return await labReport(s, { converge: true });
  } catch (e) {
    saveState(s);
    const msg = e instanceof Error ? e.message : String(e);
    throw new LabError(
      `lab up failed: ${msg}\n(state and logs kept in ${stateDir}; clean up with \`flannel-bin lab down --name ${name}\`)`,
    );
  }
}

/** Hosts, subnets, agent alive/ready and pair reachability (one quick ping per pair). */
export async function labStatus(opts: { name?: string; stateDir?: string } = {}): Promise<LabReport> {
  requireRoot();
  return labReport(loadLabState(opts), { pingCount: 1 });
}

/**
 * Removes exactly what lab.json records: agents and servers (by PID, only if their argv still matches), then the
 * namespaces (newest first), then the files. Missing pieces are skipped; other errors are collected and reported.
 */
export async function labDown(opts: { name?: string; stateDir?: string } = {}): Promise<{ removed: string[]; errors: string[] }> {
  requireRoot();
  const s = readLabState(opts);
  const removed: string[] = [];
  const errors: string[] = [];
  if (!s) return { removed, errors };
  const attempt = async (what: string, f: () => Promise<unknown>) => {
    try {
      // stopProcess says false when the process was already gone (or the PID is someone else's now).
      removed.push((await f()) === false ? `${what} (was not running)` : what);
    } catch (e) {
      errors.push(`${what}: ${(e as Error).message}`);
    }
  };
  await Promise.all(
    s.hosts.map((h) =>
      h.agentPid === null ? undefined : attempt(`agent pid ${h.agentPid}`, () => stopProcess(h.agentPid!, h.subnetFile)),
    ),
  );
  for (const srv of s.servers) await attempt(`${srv.kind} pid ${srv.pid}`, () => stopProcess(srv.pid, srv.dataDir));
  for (const ns of [...s.namespaces].reverse()) await attempt(`netns ${ns}`, () => netnsDel(ns));
  if (errors.length === 0) {
    if (s.createdStateDir) {
      rmSync(s.stateDir, { recursive: true, force: true });
      removed.push(s.stateDir);
    } else {
      for (const p of [...s.paths].reverse()) {
        rmSync(p, { recursive: true, force: true });
        removed.push(p);
      }
    }
  } else {
    saveState(s); // keep the record so a second `down` can finish the job
  }
  return { removed, errors };
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers for tests and experiments on a running lab (state in lab.json).

/** Adds host N+1 (namespace, agent, container) to a running lab; waits until its agent is ready. */
export async function labAddHost(opts: { name?: string; stateDir?: string; readyTimeoutMs?: number } = {}): Promise<LabHost> {
  requireRoot();
  const s = loadLabState(opts);
  const i = Math.max(0, ...s.hosts.map((h) => h.index)) + 1;
  if (i > MAX_HOSTS) throw new LabError(`lab ${s.name} already has ${MAX_HOSTS} hosts`);
  for (const ns of [hostName(s, i), containerName(s, i)])
    if (await netnsExists(ns)) throw new LabError(`network namespace ${ns} already exists`);
  const h = await addHostNamespace(s, i);
  startAgent(s, h);
  await waitAgentReady(h, opts.readyTimeoutMs);
  await addContainer(s, h);
  return h;
}

/** SIGTERMs a host's agent (by recorded PID) and waits for it to exit. The host's namespaces stay. */
export async function labStopHost(opts: { name?: string; stateDir?: string }, host: string): Promise<void> {
  requireRoot();
  const s = loadLabState(opts);
  const h = findHost(s, host);
  if (h.agentPid !== null) await stopProcess(h.agentPid, h.subnetFile, 10_000);
  h.agentPid = null;
  saveState(s);
}

/** Starts a stopped host's agent again (same flags, same subnet file) and waits until it is ready. */
export async function labStartHost(opts: { name?: string; stateDir?: string; readyTimeoutMs?: number }, host: string): Promise<LabHost> {
  requireRoot();
  const s = loadLabState(opts);
  const h = findHost(s, host);
  if (agentAlive(h)) throw new LabError(`agent in ${h.netns} is already running (pid ${h.agentPid})`);
  startAgent(s, h);
  await waitAgentReady(h, opts.readyTimeoutMs);
  return h;
}

/**
 * Replaces a host's agent in place with `agent` (flannel-bin or flanneld): SIGTERM to the running one (both leave
 * lease, subnet.env and kernel state in place on exit), then the other started with the same subnet file, interface
 * and store; waits until it is ready. flanneld needs a lab made with the `flanneld` option.
 */
export async function labSwitchAgent(
  opts: { name?: string; stateDir?: string; readyTimeoutMs?: number },
  host: string,
  agent: LabAgentKind,
): Promise<LabHost> {
  requireRoot();
  const s = loadLabState(opts);
  const h = findHost(s, host);
  if (agent === "flanneld" && !s.flanneld) throw new LabError(`lab ${s.name} was made without a flanneld binary`);
  if (h.agentPid !== null) await stopProcess(h.agentPid, h.subnetFile, 10_000);
  h.agentPid = null;
  h.agent = agent;
  saveState(s);
  startAgent(s, h);
  await waitAgentReady(h, opts.readyTimeoutMs);
  return h;
}

/** Stops the lab's own store server (by recorded PID): a store outage. Its data stays for labStartStore. */
export async function labStopStore(opts: { name?: string; stateDir?: string }): Promise<void> {
  requireRoot();
  const s = loadLabState(opts);
  const srv = s.servers[0];
  if (!srv) throw new LabError(`lab ${s.name} runs no store server (store ${s.store})`);
  if (!(await stopProcess(srv.pid, srv.dataDir, 10_000))) throw new LabError(`${srv.kind} pid ${srv.pid} was not running`);
}

/** Starts the lab's store server again on its data directory and address; waits until it answers. */
export async function labStartStore(opts: { name?: string; stateDir?: string }): Promise<void> {
  requireRoot();
  const s = loadLabState(opts);
  const old = s.servers[0];
  if (!old) throw new LabError(`lab ${s.name} runs no store server (store ${s.store})`);
  await startLabServer(
    old.kind,
    s.underlay,
    UNDERLAY_GATEWAY,
    s.stateDir,
    (srv) => {
      s.servers[0] = srv;
      saveState(s);
    },
    { natsServer: old.natsServer },
  );
}
