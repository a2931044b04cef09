// A Debian 12 root with a real systemd, for booting with systemd-nspawn: built once with `debootstrap
// --variant=minbase` from the Debian mirror in this machine's apt sources and cached as a tarball, so later runs only
// unpack it. If debootstrap cannot reach its source the error says so (the tests fail; they never skip).
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CACHE_ROOT } from "./release-files.ts";

export const ROOTFS_TAR = join(CACHE_ROOT, "debian12-systemd.tar");
const SUITE = "bookworm";
const PACKAGES = ["systemd", "systemd-sysv", "dbus", "iproute2", "iptables", "nftables", "curl", "ca-certificates", "busybox"];
// Units that would wait for a console, poll the network or run maintenance during a test boot.
const MASKED = [
  "console-getty.service",
  "container-getty@.service",
  "getty@.service",
  "apt-daily.timer",
  "apt-daily-upgrade.timer",
  "dpkg-db-backup.timer",
  "e2scrub_all.timer",
  "e2scrub_reap.service",
  "fstrim.timer",
  "systemd-pstore.service",
];

/** The Debian archive URI (suite bookworm, not -security/-updates) from /etc/apt/sources.list{,.d/}. */
export function debianMirror(): string {
  const found: string[] = [];
  const files = ["/etc/apt/sources.list"];
  if (existsSync("/etc/apt/sources.list.d"))
    for (const f of readdirSync("/etc/apt/sources.list.d").sort()) files.push(join("/etc/apt/sources.list.d", f));
  for (const f of files) {
    if (!existsSync(f)) continue;
    const text = readFileSync(f, "utf8");
    if (f.endsWith(".sources")) {
      // deb822: stanzas separated by blank lines.
      for (const stanza of text.split(/\n\s*\n/)) {
        const field = (k: string) =>
          stanza
            .match(new RegExp(`^${k}:\\s*(.+)$`, "mi"))?.[1]
            ?.trim()
            .split(/\s+/) ?? [];
        if (field("Types").includes("deb") && field("Suites").includes(SUITE)) found.push(...field("URIs"));
      }
    } else {
      for (const line of text.split("\n")) {
        const m = line.match(/^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/);
        if (m && m[2] === SUITE) found.push(m[1]!);
      }
    }
  }
  const uri = found.find((u) => /^https?:\/\//.test(u));
  if (!uri) throw new Error(`no Debian ${SUITE} source in /etc/apt/sources.list or /etc/apt/sources.list.d: cannot debootstrap`);
  return uri;
}

function sh(cmd: string[], timeoutMs: number): { code: number; out: string } {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe", timeout: timeoutMs, killSignal: "SIGKILL" });
  return { code: r.exitCode ?? -1, out: `${r.stdout.toString()}${r.stderr.toString()}` };
}

/** Unmounts (lazily, deepest first) whatever is mounted at or below `dir`: never delete across a mount point. */
export function unmountUnder(dir: string): string[] {
  const mounts = readFileSync("/proc/mounts", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[1]?.replace(/\\040/g, " ") ?? "")
    .filter((m) => m === dir || m.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) sh(["umount", "-l", m], 30_000);
  return mounts;
}

/** Builds ROOTFS_TAR unless it exists (bounded: 20 minutes). Returns its path. */
export function ensureRootfsTar(): string {
  if (existsSync(ROOTFS_TAR)) return ROOTFS_TAR;
  if (!Bun.which("debootstrap")) throw new Error("debootstrap is not installed (scripts/setup.sh installs it)");
  const mirror = debianMirror();
  mkdirSync(CACHE_ROOT, { recursive: true });
  const work = mkdtempSync(join(CACHE_ROOT, ".rootfs-"));
  const root = join(work, "root");
  try {
    const r = sh(["debootstrap", "--variant=minbase", `--include=${PACKAGES.join(",")}`, SUITE, root, mirror], 1_200_000);
    if (r.code !== 0) {
      const tail = r.out.trimEnd().split("\n").slice(-15).join("\n");
      const log = existsSync(join(root, "debootstrap/debootstrap.log"))
        ? readFileSync(join(root, "debootstrap/debootstrap.log"), "utf8").trimEnd().split("\n").slice(-15).join("\n")
        : "";
      throw new Error(`debootstrap of Debian ${SUITE} from ${mirror} failed (exit ${r.code}): could it reach ${mirror}?\n${tail}\n${log}`);
    }
    for (const u of MASKED) {
      rmSync(join(root, "etc/systemd/system", u), { force: true });
      symlinkSync("/dev/null", join(root, "etc/systemd/system", u));
    }
    // Empty: each boot makes its own machine id.
    writeFileSync(join(root, "etc/machine-id"), "");
    rmSync(join(root, "var/cache/apt/archives"), { recursive: true, force: true });
    mkdirSync(join(root, "var/cache/apt/archives/partial"), { recursive: true });
    rmSync(join(root, "var/lib/apt/lists"), { recursive: true, force: true });
    mkdirSync(join(root, "var/lib/apt/lists"), { recursive: true });
    const t = sh(["tar", "--numeric-owner", "-C", root, "-cf", `${ROOTFS_TAR}.tmp`, "."], 600_000);
    if (t.code !== 0) throw new Error(`tar of the Debian root failed: ${t.out}`);
    renameSync(`${ROOTFS_TAR}.tmp`, ROOTFS_TAR);
  } finally {
    rmSync(`${ROOTFS_TAR}.tmp`, { force: true });
    unmountUnder(work);
    rmSync(work, { recursive: true, force: true });
  }
  return ROOTFS_TAR;
}

/** Unpacks the cached root into a new folder under `parent` (bounded); the caller removes it. */
export function unpackRootfs(parent: string): string {
  const tar = ensureRootfsTar();
  const dir = mkdtempSync(join(parent, "root-"));
  const r = sh(["tar", "--numeric-owner", "-C", dir, "-xf", tar], 300_000);
  if (r.code !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`unpacking ${tar} failed: ${r.out}`);
  }
  return dir;
}
