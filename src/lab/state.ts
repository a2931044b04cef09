// The lab's record of itself: what it is (backend, store, hosts) and everything it created, in <stateDir>/lab.json.
// Every namespace, process and path is recorded as soon as it exists, so `lab down` removes exactly that (also after a
// failed `up`) and nothing else.
import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { netnsAdd } from "./netns.ts";
import type { LabServer } from "./servers.ts";

export type LabBackend = "vxlan" | "host-gw";
export type LabStoreKind = "sqlite" | "etcd" | "nats";
/** What runs in a host: flannel-bin, or the real flanneld (a test peer, for mixed clusters and migration). */
export type LabAgentKind = "flannel-bin" | "flanneld";

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
  /** Absent in a lab.json from before mixed labs: flannel-bin. */
  agent?: LabAgentKind;
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
  /** flanneld binary and extra flags, when some hosts run flanneld (etcd store only). */
  flanneld?: { binary: string; args: string[] };
  underlay: string;
  /** Every namespace created, in creation order. */
  namespaces: string[];
  hosts: LabHost[];
  servers: LabServer[];
  /** Files and directories created inside a pre-existing stateDir (removed by labDown). */
  paths: string[];
}

/** Hosts are 192.0.2.(10+i) on one /24 and every pair is pinged at once: 50 keeps both well inside their limits. */
export const MAX_HOSTS = 50;

export class LabError extends Error {}

export function requireRoot(): void {
  if (typeof process.getuid === "function" && process.getuid() !== 0) throw new LabError("flannel-bin lab needs root (network namespaces)");
}

export function labName(opts: { name?: string }): string {
  const name = opts.name ?? "flab";
  // Namespace names and file paths are built from it: keep it short and plain.
  if (!/^[a-z][a-z0-9]{0,11}$/.test(name))
    throw new LabError(`lab name ${JSON.stringify(name)} must be 1-12 lower-case letters/digits, starting with a letter`);
  return name;
}

export function labStateDir(opts: { name?: string; stateDir?: string }): string {
  return resolve(opts.stateDir ?? `/run/flannel-bin-lab/${labName(opts)}`);
}

export const stateFile = (stateDir: string) => join(stateDir, "lab.json");

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

/** The lab's state, or an error naming the missing file. */
export function loadLabState(opts: { name?: string; stateDir?: string }): LabState {
  const s = readLabState(opts);
  if (!s) throw new LabError(`no lab ${labName(opts)} (no ${stateFile(labStateDir(opts))})`);
  return s;
}

export function saveState(s: LabState): void {
  const file = stateFile(s.stateDir);
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(s, null, 2)}\n`, { mode: 0o644 });
  renameSync(tmp, file);
}

export function hostName(s: LabState, i: number): string {
  return `${s.name}-h${i}`;
}

export function containerName(s: LabState, i: number): string {
  return `${s.name}-c${i}`;
}

/** Remembers a path for labDown (only needed inside a stateDir the lab did not create: else the whole dir goes). */
export function recordPath(s: LabState, p: string): void {
  if (!s.createdStateDir && !s.paths.includes(p)) s.paths.push(p);
}

export async function addNamespace(s: LabState, ns: string): Promise<void> {
  await netnsAdd(ns);
  s.namespaces.push(ns);
  saveState(s);
}

export function findHost(s: LabState, host: string): LabHost {
  const h = s.hosts.find((x) => x.netns === host || String(x.index) === host || `h${x.index}` === host);
  if (!h) throw new LabError(`lab ${s.name} has no host ${JSON.stringify(host)} (hosts: ${s.hosts.map((x) => x.netns).join(", ")})`);
  return h;
}
