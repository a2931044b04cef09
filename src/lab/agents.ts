// The agent in each lab host: `flannel-bin run` (or the real flanneld, in a mixed lab) started detached in the host
// namespace (recorded by PID), its liveness, its readiness (/readyz and a usable subnet.env) and the subnet.env it wrote.
import { logger } from "../log.ts";
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { parseEnvFile } from "../subnet-env.ts";
import { GiveUp, execIn, processAlive, processArgv, spawnDetachedIn, waitFor } from "./netns.ts";
import { type LabHost, LabError, type LabState, recordPath, saveState } from "./state.ts";

const log = logger("lab");

export const HEALTHZ_PORT = 8471;

/** Compiled binaries run from Bun's embedded file system; then the agent is this very executable. */
export function defaultBinary(): string {
  if (Bun.main.startsWith("/$bunfs/") || import.meta.path.startsWith("/$bunfs/")) return process.execPath;
  return resolve(dirname(import.meta.path), "../../dist/flannel-bin");
}

/** The value of `--name v` in a flag list (the lab writes its store flags in that form). */
function flagValue(flags: string[], name: string): string | undefined {
  const i = flags.indexOf(name);
  return i >= 0 ? flags[i + 1] : undefined;
}

/**
 * flanneld v0.28 on the lab's etcd, outside Kubernetes: the same store, interface, subnet file and health port as a
 * flannel-bin host. Values as separate arguments (Go's flag package takes `-flag value`), so the subnet file is one
 * argv entry and agentAlive/stopProcess recognise the process.
 */
function flanneldArgv(s: LabState, h: LabHost): string[] {
  const endpoints = flagValue(s.storeFlags, "--etcd-endpoints");
  if (!s.flanneld || s.store !== "etcd" || !endpoints) throw new LabError(`${h.netns}: flanneld hosts need the lab's etcd store`);
  const prefix = flagValue(s.storeFlags, "--etcd-prefix");
  return [
    s.flanneld.binary,
    "-etcd-endpoints",
    endpoints,
    ...(prefix ? ["-etcd-prefix", prefix] : []),
    "-iface",
    "eth0",
    "-subnet-file",
    h.subnetFile,
    "-healthz-ip",
    "127.0.0.1",
    "-healthz-port",
    String(HEALTHZ_PORT),
    ...s.flanneld.args,
  ];
}

function agentArgv(s: LabState, h: LabHost): string[] {
  if (h.agent === "flanneld") return flanneldArgv(s, h);
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

export function startAgent(s: LabState, h: LabHost): void {
  recordPath(s, h.logFile);
  recordPath(s, h.subnetFile);
  h.agentPid = spawnDetachedIn(h.netns, agentArgv(s, h), h.logFile);
  saveState(s);
  log.info(`${h.agent ?? "flannel-bin"} pid ${h.agentPid} in ${h.netns} (log ${h.logFile})`);
}

export function logTail(file: string, lines = 15): string {
  try {
    return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

/** The agent's process is alive and still the one we started (its argv names this host's subnet file). */
export function agentAlive(h: LabHost): boolean {
  if (h.agentPid === null || !processAlive(h.agentPid)) return false;
  const argv = processArgv(h.agentPid);
  return argv?.includes(h.subnetFile) ?? false;
}

export async function agentReady(h: LabHost): Promise<boolean> {
  const r = await execIn(h.netns, ["curl", "-sf", "--max-time", "1", `http://127.0.0.1:${HEALTHZ_PORT}/readyz`], {
    allowFail: true,
    timeoutMs: 3000,
  });
  return r.code === 0;
}

export async function waitAgentReady(h: LabHost, timeoutMs = 30_000): Promise<void> {
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
