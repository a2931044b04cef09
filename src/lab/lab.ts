// The multi-host lab: N "hosts" (network namespaces) on one underlay bridge, a flannel-bin agent in each, and a
// "container" namespace behind each host's cni0 bridge addressed from subnet.env, exactly as Docker's --bip/--mtu
// would. Then every container pings every other one. Everything created is recorded in <stateDir>/lab.json as it is
// created, so labDown removes exactly that (also after a failed labUp) and nothing else.
//
// Topology (name "flab"):
//   flab-ul: br0 192.0.2.1/24 (TEST-NET-1), etcd/nats server if any
//   flab-hI: eth0 192.0.2.(10+I)/24, default via 192.0.2.1; agent; cni0 = FLANNEL_SUBNET (.1), mtu FLANNEL_MTU
//   flab-cI: eth0 = .2 of the host's subnet, default via .1
// The root namespace gets no address, route or link.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { consola } from "consola";
import { parseEnvFile } from "../subnet-env.ts";
import {
  GiveUp,
  addrAdd,
  bridgeAdd,
  defaultRouteAdd,
  execIn,
  linkSetMaster,
  linkUp,
  netnsAdd,
  netnsDel,
  netnsExists,
  processAlive,
  processArgv,
  spawnDetachedIn,
  stopProcess,
  sysctlSet,
  vethAdd,
  waitFor,
} from "./netns.ts";
import { type LabServer, startLabServer } from "./servers.ts";

const log = consola.withTag("lab");

export type LabBackend = "vxlan" | "host-gw";
export type LabStoreKind = "sqlite" | "etcd" | "nats";

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
  /** Bound for each agent's readiness (default 30 s). */
  readyTimeoutMs?: number;
}

export interface LabHost {
  /** Host namespace, e.g. "flab-h1". */
  netns: string;
  index: number;
  /** Underlay address (eth0), 192.0.2.(10+index). */
  publicIP: string;
  dir: string;
  subnetFile: string;
  logFile: string;
  agentPid: number | null;
  /** Container namespace, once created. */
  containerNetns: string | null;
  containerIP: string | null;
}

export interface LabState {
  version: 1;
  name: string;
  stateDir: string;
  /** True if labUp made stateDir: then labDown removes it whole. */
  createdStateDir: boolean;
  backend: LabBackend;
  store: LabStoreKind;
  network: string;
  binary: string;
  storeFlags: string[];
  agentArgs: string[];
  underlay: string;
  /** Every namespace created, in creation order. */
  namespaces: string[];
  hosts: LabHost[];
  servers: LabServer[];
  /** Files and directories created inside a pre-existing stateDir (removed by labDown). */
  paths: string[];
}

export interface HostReport {
  host: string;
  subnet: string | null;
  mtu: number | null;
  publicIP: string;
  backend: LabBackend;
  agentAlive: boolean;
  ready: boolean;
}

export interface PairReport {
  from: string;
  to: string;
  toIP: string;
  ok: boolean;
  /** Average RTT in ms, when ok. */
  rttMs: number | null;
  detail: string;
}

export interface LabReport {
  name: string;
  backend: LabBackend;
  store: LabStoreKind;
  hosts: HostReport[];
  pairs: PairReport[];
  ok: boolean;
}

export const UNDERLAY_GATEWAY = "192.0.2.1";
const UNDERLAY_PREFIX = 24;
const HEALTHZ_PORT = 8471;
const MAX_HOSTS = 200;

export class LabError extends Error {}

function requireRoot(): void {
  if (typeof process.getuid === "function" && process.getuid() !== 0) throw new LabError("flannel-bin lab needs root (network namespaces)");
}

function labName(opts: { name?: string }): string {
  const name = opts.name ?? "flab";
  // Namespace names and file paths are built from it: keep it short and plain.
  if (!/^[a-z][a-z0-9]{0,11}$/.test(name))
    throw new LabError(`lab name ${JSON.stringify(name)} must be 1-12 lower-case letters/digits, starting with a letter`);
  return name;
}

export function labStateDir(opts: { name?: string; stateDir?: string }): string {
  return resolve(opts.stateDir ?? `/run/flannel-bin-lab/${labName(opts)}`);
}

const stateFile = (stateDir: string) => join(stateDir, "lab.json");

/** Compiled binaries run from Bun's embedded file system; then the agent is this very executable. */
export function defaultBinary(): string {
  if (Bun.main.startsWith("/$bunfs/") || import.meta.path.startsWith("/$bunfs/")) return process.execPath;
  return resolve(dirname(import.meta.path), "../../dist/flannel-bin");
}

export function readLabState(opts: { name?: string; stateDir?: string }): LabState | null {
  const file = stateFile(labStateDir(opts));
  if (!existsSync(file)) return null;
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw new LabError(`${file} is not valid JSON: ${(e as Error).message}`);
  }
  const s = raw as LabState;
  if (s?.version !== 1 || !Array.isArray(s.namespaces) || !Array.isArray(s.hosts) || !Array.isArray(s.servers))
    throw new LabError(`${file} is not a lab state file (version 1)`);
  return s;
}

function saveState(s: LabState): void {
  const file = stateFile(s.stateDir);
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(s, null, 2)}\n`, { mode: 0o644 });
  renameSync(tmp, file);
}

function hostName(s: LabState, i: number): string {
  return `${s.name}-h${i}`;
}

function recordPath(s: LabState, p: string): void {
  if (!s.createdStateDir && !s.paths.includes(p)) s.paths.push(p);
}

async function addNamespace(s: LabState, ns: string): Promise<void> {
  await netnsAdd(ns);
  s.namespaces.push(ns);
  saveState(s);
}

// ---------------------------------------------------------------------------------------------------------------

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
    await addNamespace(s, s.underlay);
    await bridgeAdd(s.underlay, "br0");
    await addrAdd(s.underlay, "br0", `${UNDERLAY_GATEWAY}/${UNDERLAY_PREFIX}`);
    await linkUp(s.underlay, "br0");
    for (let i = 1; i <= nHosts; i++) await addHostNamespace(s, i);
    if (opts.topologyOnly) return await labReport(s, { pingCount: 1 });

    await setupStore(s, opts.storeArgs);
    await putNetworkConfig(s, opts.backendOptions);
    // Start all agents first, then wait: they come up in parallel.
    for (const h of s.hosts) startAgent(s, h);
    await Promise.all(s.hosts.map((h) => waitAgentReady(s, h, opts.readyTimeoutMs)));
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

async function addHostNamespace(s: LabState, i: number): Promise<LabHost> {
  const ns = hostName(s, i);
  const dir = join(s.stateDir, ns);
  const h: LabHost = {
    netns: ns,
    index: i,
    publicIP: `192.0.2.${10 + i}`,
    dir,
    subnetFile: join(dir, "subnet.env"),
    logFile: join(dir, "agent.log"),
    agentPid: null,
    containerNetns: null,
    containerIP: null,
  };
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  recordPath(s, dir);
  await addNamespace(s, ns);
  s.hosts.push(h);
  saveState(s);
  // The underlay side lives in the underlay namespace from the start: nothing ever appears in the root namespace.
  await vethAdd({ name: `vh${i}`, netns: s.underlay }, { name: "eth0", netns: ns });
  await linkSetMaster(s.underlay, `vh${i}`, "br0");
  await linkUp(s.underlay, `vh${i}`);
  await addrAdd(ns, "eth0", `${h.publicIP}/${UNDERLAY_PREFIX}`);
  await linkUp(ns, "eth0");
  // The agent picks the default-route interface when not told otherwise; give it one.
  await defaultRouteAdd(ns, UNDERLAY_GATEWAY);
  // Hosts forward container traffic (Docker would set this).
  await sysctlSet(ns, "net.ipv4.ip_forward", "1");
  return h;
}

async function setupStore(s: LabState, storeArgs: string[] | undefined): Promise<void> {
  if (storeArgs && storeArgs.length > 0) {
    s.storeFlags = ["--store", s.store, ...storeArgs];
  } else if (s.store === "sqlite") {
    // One file shared by all hosts: the namespaces share the file system.
    const db = join(s.stateDir, "flannel.db");
    for (const p of [db, `${db}-wal`, `${db}-shm`, `${db}-journal`]) recordPath(s, p);
    s.storeFlags = ["--store", "sqlite", "--sqlite-path", db];
  } else {
    const kind = s.store;
    const server = await startLabServer(kind, s.underlay, UNDERLAY_GATEWAY, s.stateDir, (srv) => {
      s.servers.push(srv);
      recordPath(s, srv.dataDir);
      recordPath(s, srv.logFile);
      saveState(s);
    });
    s.storeFlags = server.storeFlags;
    log.info(`${kind} server pid ${server.pid} in ${s.underlay}: ${server.storeFlags.join(" ")}`);
  }
  saveState(s);
}

async function putNetworkConfig(s: LabState, backendOptions: Record<string, unknown> = {}): Promise<void> {
  const config = JSON.stringify({ Network: s.network, Backend: { Type: s.backend, ...backendOptions } });
  // From inside the underlay so a server listening on 192.0.2.1 is reachable. A fresh server may need a moment.
  await waitFor(
    `\`config put\` to succeed`,
    15_000,
    async () => {
      await execIn(s.underlay, [s.binary, "config", "put", config, ...s.storeFlags], { timeoutMs: 10_000 });
      return true;
    },
    500,
  );
}

function agentArgv(s: LabState, h: LabHost): string[] {
  return [
    s.binary,
    "run",
    ...s.storeFlags,
    "--iface",
    "eth0",
    "--subnet-file",
    h.subnetFile,
    "--healthz-ip",
    "127.0.0.1",
    "--healthz-port",
    String(HEALTHZ_PORT),
    ...s.agentArgs,
  ];
}

function startAgent(s: LabState, h: LabHost): void {
  recordPath(s, h.logFile);
  recordPath(s, h.subnetFile);
  h.agentPid = spawnDetachedIn(h.netns, agentArgv(s, h), h.logFile);
  saveState(s);
  log.info(`agent pid ${h.agentPid} in ${h.netns} (log ${h.logFile})`);
}

function logTail(file: string, lines = 15): string {
  try {
    return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

/** The agent's process is alive and still the one we started (its argv names this host's subnet file). */
function agentAlive(h: LabHost): boolean {
  if (h.agentPid === null || !processAlive(h.agentPid)) return false;
  const argv = processArgv(h.agentPid);
  return argv?.includes(h.subnetFile) ?? false;
}

async function agentReady(h: LabHost): Promise<boolean> {
  const r = await execIn(h.netns, ["curl", "-sf", "--max-time", "1", `http://127.0.0.1:${HEALTHZ_PORT}/readyz`], {
    allowFail: true,
    timeoutMs: 3000,
  });
  return r.code === 0;
}

async function waitAgentReady(_s: LabState, h: LabHost, timeoutMs = 30_000): Promise<void> {
  await waitFor(`agent in ${h.netns} to be ready (/readyz and ${h.subnetFile})`, timeoutMs, async () => {
    // Only liveness here: right after the spawn the child's argv is still ours until `ip netns exec` has exec'd.
    if (h.agentPid === null || !processAlive(h.agentPid))
      throw new GiveUp(`agent in ${h.netns} (pid ${h.agentPid}) exited; last lines of ${h.logFile}:\n${logTail(h.logFile)}`);
    return (await agentReady(h)) && readSubnetEnv(h) !== null ? true : undefined;
  });
}

export function readSubnetEnv(h: LabHost): { subnet: string; network: string | null; mtu: number } | null {
  let text: string;
  try {
    text = readFileSync(h.subnetFile, "utf8");
  } catch {
    return null;
  }
  const env = parseEnvFile(text);
  const subnet = env.FLANNEL_SUBNET;
  const mtu = Number(env.FLANNEL_MTU);
  if (!subnet || !/^\d+\.\d+\.\d+\.\d+\/\d+$/.test(subnet) || !Number.isInteger(mtu) || mtu < 68) return null;
  return { subnet, network: env.FLANNEL_NETWORK ?? null, mtu };
}

/** "10.5.72.1/24" -> { gw: "10.5.72.1", container: "10.5.72.2", prefix: 24 } */
function containerAddrs(flannelSubnet: string): { gw: string; container: string; prefix: number } {
  const [addr, prefix] = flannelSubnet.split("/") as [string, string];
  const o = addr.split(".").map(Number);
  const container = [o[0], o[1], o[2], (o[3] ?? 0) + 1].join(".");
  return { gw: addr, container, prefix: Number(prefix) };
}

/** What Docker does with --bip=$FLANNEL_SUBNET --mtu=$FLANNEL_MTU, by hand: cni0 bridge + one container. */
async function addContainer(s: LabState, h: LabHost): Promise<void> {
  const env = readSubnetEnv(h);
  if (!env) throw new LabError(`${h.subnetFile} has no usable FLANNEL_SUBNET/FLANNEL_MTU`);
  const { gw, container, prefix } = containerAddrs(env.subnet);
  const cns = `${s.name}-c${h.index}`;
  await addNamespace(s, cns);
  h.containerNetns = cns;
  saveState(s);
  await bridgeAdd(h.netns, "cni0", env.mtu);
  await addrAdd(h.netns, "cni0", `${gw}/${prefix}`);
  await linkUp(h.netns, "cni0");
  await vethAdd({ name: "vc0", netns: h.netns }, { name: "eth0", netns: cns }, env.mtu);
  await linkSetMaster(h.netns, "vc0", "cni0");
  await linkUp(h.netns, "vc0");
  await addrAdd(cns, "eth0", `${container}/${prefix}`);
  await linkUp(cns, "eth0");
  await defaultRouteAdd(cns, gw);
  h.containerIP = container;
  saveState(s);
}

// ---------------------------------------------------------------------------------------------------------------
// Reachability

/** One ping run: `ping -c N -W 1 -i 0.2`, parsed. */
export async function pingFrom(
  netns: string,
  target: string,
  opts: { count?: number; size?: number; dontFragment?: boolean } = {},
): Promise<{ ok: boolean; rttMs: number | null; output: string }> {
  const count = opts.count ?? 3;
  const cmd = ["ping", "-n", "-c", String(count), "-W", "1", "-i", "0.2"];
  if (opts.size !== undefined) cmd.push("-s", String(opts.size));
  if (opts.dontFragment) cmd.push("-M", "do");
  cmd.push(target);
  const r = await execIn(netns, cmd, { allowFail: true, timeoutMs: 5000 + count * 1500 });
  const m = /= [\d.]+\/([\d.]+)\//.exec(r.stdout);
  const received = /(\d+) received/.exec(r.stdout);
  const ok = r.code === 0 && received !== null && Number(received[1]) > 0;
  return { ok, rttMs: ok && m ? Number(m[1]) : null, output: (r.stdout + r.stderr).trim() };
}

async function pingPair(from: LabHost, to: LabHost, converge: boolean, count: number): Promise<PairReport> {
  const base = { from: from.netns, to: to.netns, toIP: to.containerIP ?? to.publicIP };
  const src = from.containerNetns ?? from.netns;
  // While routes converge (peers learn about each other via the store watch), retry a bounded number of times.
  const attempts = converge ? 8 : 1;
  const deadline = Date.now() + (converge ? 20_000 : 8_000);
  let last = { ok: false, rttMs: null as number | null, output: "" };
  for (let a = 0; a < attempts && Date.now() < deadline; a++) {
    last = await pingFrom(src, base.toIP, { count });
    if (last.ok) return { ...base, ok: true, rttMs: last.rttMs, detail: "" };
    await Bun.sleep(500);
  }
  const lastLine =
    last.output
      .split("\n")
      .filter((l) => l.trim() !== "")
      .pop() ?? "";
  return { ...base, ok: false, rttMs: null, detail: lastLine };
}

/** Pings every pair of (live) hosts' containers; from the host namespaces if there are no containers. */
export async function pingAllPairs(
  s: LabState,
  opts: { converge?: boolean; count?: number; hosts?: LabHost[] } = {},
): Promise<PairReport[]> {
  const hosts = opts.hosts ?? s.hosts;
  const jobs: Promise<PairReport>[] = [];
  for (const a of hosts) for (const b of hosts) if (a !== b) jobs.push(pingPair(a, b, opts.converge ?? false, opts.count ?? 3));
  return Promise.all(jobs);
}

async function labReport(s: LabState, opts: { converge?: boolean; pingCount?: number } = {}): Promise<LabReport> {
  const hosts: HostReport[] = [];
  for (const h of s.hosts) {
    const env = readSubnetEnv(h);
    const alive = agentAlive(h);
    hosts.push({
      host: h.netns,
      subnet: env?.subnet ?? null,
      mtu: env?.mtu ?? null,
      publicIP: h.publicIP,
      backend: s.backend,
      agentAlive: alive,
      ready: alive && (await agentReady(h)),
    });
  }
  const pairs = await pingAllPairs(s, { converge: opts.converge, count: opts.pingCount ?? 3 });
  return { name: s.name, backend: s.backend, store: s.store, hosts, pairs, ok: pairs.every((p) => p.ok) };
}

/** Human-readable tables: hosts, then one line per pair. */
export function formatLabReport(r: LabReport): string {
  const pad = (cells: string[], widths: number[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join("  ")
      .trimEnd();
  const table = (head: string[], rows: string[][]) => {
    const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? "").length)));
    return [
      pad(head, widths),
      pad(
        widths.map((w) => "-".repeat(w)),
        widths,
      ),
      ...rows.map((row) => pad(row, widths)),
    ].join("\n");
  };
  const hostRows = r.hosts.map((h) => [
    h.host,
    h.subnet ?? "-",
    h.publicIP,
    h.backend,
    h.mtu === null ? "-" : String(h.mtu),
    h.agentAlive ? (h.ready ? "ready" : "alive, not ready") : "not running",
  ]);
  const pairRows = r.pairs.map((p) => [
    p.from,
    p.to,
    p.toIP,
    p.ok ? "ok" : "FAIL",
    p.rttMs === null ? "-" : `${p.rttMs.toFixed(3)} ms`,
    p.detail,
  ]);
  const okCount = r.pairs.filter((p) => p.ok).length;
  return [
    `lab ${r.name}: backend ${r.backend}, store ${r.store}`,
    "",
    table(["HOST", "SUBNET", "PUBLIC IP", "BACKEND", "MTU", "AGENT"], hostRows),
    "",
    table(["FROM", "TO", "TARGET", "PING", "AVG RTT", "DETAIL"], pairRows),
    "",
    `${okCount}/${r.pairs.length} pairs reachable`,
  ].join("\n");
}

// ---------------------------------------------------------------------------------------------------------------

function loadOrThrow(opts: { name?: string; stateDir?: string }): LabState {
  const s = readLabState(opts);
  if (!s) throw new LabError(`no lab ${labName(opts)} (no ${stateFile(labStateDir(opts))})`);
  return s;
}

/** Hosts, subnets, agent alive/ready and pair reachability (one quick ping per pair). */
export async function labStatus(opts: { name?: string; stateDir?: string } = {}): Promise<LabReport> {
  requireRoot();
  return labReport(loadOrThrow(opts), { pingCount: 1 });
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
  const s = loadOrThrow(opts);
  const i = Math.max(0, ...s.hosts.map((h) => h.index)) + 1;
  if (i > MAX_HOSTS) throw new LabError(`lab ${s.name} already has ${MAX_HOSTS} hosts`);
  for (const ns of [hostName(s, i), `${s.name}-c${i}`])
    if (await netnsExists(ns)) throw new LabError(`network namespace ${ns} already exists`);
  const h = await addHostNamespace(s, i);
  startAgent(s, h);
  await waitAgentReady(s, h, opts.readyTimeoutMs);
  await addContainer(s, h);
  return h;
}

/** SIGTERMs a host's agent (by recorded PID) and waits for it to exit. The host's namespaces stay. */
export async function labStopHost(opts: { name?: string; stateDir?: string }, host: string): Promise<void> {
  requireRoot();
  const s = loadOrThrow(opts);
  const h = findHost(s, host);
  if (h.agentPid !== null) await stopProcess(h.agentPid, h.subnetFile, 10_000);
  h.agentPid = null;
  saveState(s);
}

/** Starts a stopped host's agent again (same flags, same subnet file) and waits until it is ready. */
export async function labStartHost(opts: { name?: string; stateDir?: string; readyTimeoutMs?: number }, host: string): Promise<LabHost> {
  requireRoot();
  const s = loadOrThrow(opts);
  const h = findHost(s, host);
  if (agentAlive(h)) throw new LabError(`agent in ${h.netns} is already running (pid ${h.agentPid})`);
  startAgent(s, h);
  await waitAgentReady(s, h, opts.readyTimeoutMs);
  return h;
}

function findHost(s: LabState, host: string): LabHost {
  const h = s.hosts.find((x) => x.netns === host || String(x.index) === host || `h${x.index}` === host);
  if (!h) throw new LabError(`lab ${s.name} has no host ${JSON.stringify(host)} (hosts: ${s.hosts.map((x) => x.netns).join(", ")})`);
  return h;
}
