// subnet.env: flanneld's hand-off file to Docker and CNI (docs/flannel-compat.md §4). Same keys, same order, 0644,
// written atomically so a reader never sees half a file.

import { chmodSync, closeSync, constants, fstatSync, mkdirSync, openSync, readSync, renameSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { type IPNet, formatCIDR, formatIP, tryParseCIDR } from "./ipmath.ts";
import { logger } from "./log.ts";
import { escapeLogText } from "./log-text.ts";

const log = logger("subnet-env");

/** flanneld's file is under 200 bytes; anything much larger is not one. */
export const SUBNET_ENV_MAX_BYTES = 4096;

export interface SubnetEnv {
  network: IPNet | null;
  subnet: IPNet | null;
  ipv6Network?: IPNet | null;
  ipv6Subnet?: IPNet | null;
  mtu: number;
  ipMasq: boolean;
}

/** The file's text, exactly flanneld's: FLANNEL_SUBNET is the subnet's first host address (.1) with the subnet length. */
export function formatSubnetEnv(e: SubnetEnv): string {
  const lines: string[] = [];
  const firstHost = (n: IPNet) => `${formatIP(n.ip + 1n, n.family)}/${n.prefix}`;
  if (e.network && e.subnet) lines.push(`FLANNEL_NETWORK=${formatCIDR(e.network)}`, `FLANNEL_SUBNET=${firstHost(e.subnet)}`);
  if (e.ipv6Network && e.ipv6Subnet)
    lines.push(`FLANNEL_IPV6_NETWORK=${formatCIDR(e.ipv6Network)}`, `FLANNEL_IPV6_SUBNET=${firstHost(e.ipv6Subnet)}`);
  lines.push(`FLANNEL_MTU=${e.mtu}`, `FLANNEL_IPMASQ=${e.ipMasq}`);
  return `${lines.join("\n")}\n`;
}

export function writeSubnetEnv(path: string, e: SubnetEnv): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, formatSubnetEnv(e), { mode: 0o644 });
  chmodSync(tmp, 0o644); // regardless of umask, as flanneld
  renameSync(tmp, path);
}

/** Parses dotenv-style KEY=value lines (optional quotes, comments). */
export function parseEnvFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line);
    if (!m) continue;
    let v = m[2]!;
    if ((v.startsWith('"') && v.endsWith('"')) || (v.startsWith("'") && v.endsWith("'"))) v = v.slice(1, -1);
    out[m[1]!] = v;
  }
  return out;
}

/** The previous FLANNEL_SUBNET (masked to its network), or null if the file, the key or a single value is missing. */
export function readPreviousSubnet(path: string): { subnet: IPNet | null; ipv6Subnet: IPNet | null } {
  const none = { subnet: null, ipv6Subnet: null };
  const text = readSmallRegularFile(path, SUBNET_ENV_MAX_BYTES);
  if (text === null) return none;
  const env = parseEnvFile(text);
  const one = (v: string | undefined, family: 4 | 6): IPNet | null => {
    if (!v || v.includes(",")) return null;
    const n = tryParseCIDR(v.trim());
    return n && n.family === family ? n : null;
  };
  return { subnet: one(env.FLANNEL_SUBNET, 4), ipv6Subnet: one(env.FLANNEL_IPV6_SUBNET, 6) };
}

/**
 * The file's text if it is a regular file of at most `max` bytes; null (with a warning, except for a missing file)
 * otherwise. Opened non-blocking and checked on the open descriptor, so a FIFO, a device or a directory swapped in
 * at that path can never block the agent or make it read without bound.
 */
export function readSmallRegularFile(path: string, max: number): string | null {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") log.warn(`ignoring ${escapeLogText(path)}: ${escapeLogText((e as Error).message)}`);
    return null;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) {
      log.warn(`ignoring ${escapeLogText(path)}: not a regular file (${fileKind(st)})`);
      return null;
    }
    if (st.size > max) {
      log.warn(`ignoring ${escapeLogText(path)}: ${st.size} bytes, more than the ${max} a subnet file can hold`);
      return null;
    }
    // Read at most max + 1 bytes whatever the size said: the file may grow between fstat and read.
    const buf = Buffer.alloc(max + 1);
    let n = 0;
    for (;;) {
      const r = readSync(fd, buf, n, buf.length - n, null);
      if (r === 0) break;
      n += r;
      if (n > max) {
        log.warn(`ignoring ${escapeLogText(path)}: more than the ${max} bytes a subnet file can hold`);
        return null;
      }
    }
    return buf.subarray(0, n).toString("utf8");
  } catch (e) {
    log.warn(`ignoring ${escapeLogText(path)}: ${escapeLogText((e as Error).message)}`);
    return null;
  } finally {
    closeSync(fd);
  }
}

function fileKind(st: import("node:fs").Stats): string {
  if (st.isDirectory()) return "a directory";
  if (st.isFIFO()) return "a FIFO";
  if (st.isSocket()) return "a socket";
  if (st.isCharacterDevice() || st.isBlockDevice()) return "a device";
  return "not a regular file";
}
