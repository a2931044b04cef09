// The guides' Docker workflow on two lab hosts: flannel-bin runs with --ip-masq, then dockerd starts in each host
// namespace with --bip/--mtu from subnet.env and --ip-masq=false (what mk-docker-opts.sh derives from
// FLANNEL_IPMASQ=true), the FORWARD policy is DROP (what Docker sets when it turns ip_forward on), and real Docker
// containers (a busybox rootfs made with `docker import`) ping each other across hosts and reach an address outside
// the cluster. dockerd gets its own data/exec roots and socket under the lab's state dir, the vfs storage driver (no
// overlay mounts) and cgroup hierarchies mounted in its own mount namespace (`ip netns exec` gives it one; they go
// with it). Everything is stopped by the PIDs started here.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { cpSync, existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type LabHost, labDown, labUp } from "../../src/lab/lab.ts";
import { execIn, ip, processAlive, spawnDetachedIn, stopProcess } from "../../src/lab/netns.ts";
import { ensureBinary, host, labState, updateLabState, waitUntil, testName } from "./helpers.ts";

const T = 180_000;
const LAB = { name: testName("dkr") };
const OUTSIDE_IP = "192.0.2.200";
const DOCKER = "/usr/bin/docker"; // the Debian docker.io client (another `docker` may come first on PATH)
const haveDocker = existsSync("/usr/sbin/dockerd") && existsSync(DOCKER);
const daemons: { pid: number; root: string }[] = [];

const dockerDir = (h: LabHost) => join(h.dir, "docker");
const sock = (h: LabHost) => `unix://${join(dockerDir(h), "docker.sock")}`;
const docker = async (h: LabHost, args: string[], allowFail = false) =>
  execIn(h.netns, [DOCKER, "-H", sock(h), ...args], { timeoutMs: 60_000, allowFail });

const CGROUP_SCRIPT = `#!/bin/sh
set -e
mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
  mkdir -p /sys/fs/cgroup/$c; mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c
done
mkdir -p /sys/fs/cgroup/systemd; mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
exec "$@"
`;

/** A minimal busybox root (the binary and the libraries it links), as a tar for `docker import`. */
function busyboxTar(dir: string): string {
  const root = join(dir, "rootfs");
  mkdirSync(join(root, "bin"), { recursive: true });
  cpSync("/usr/bin/busybox", join(root, "bin/busybox"));
  const ldd = Bun.spawnSync(["ldd", "/usr/bin/busybox"], { stdout: "pipe" }).stdout.toString();
  for (const lib of ldd.match(/\/lib[^\s]*/g) ?? []) {
    mkdirSync(join(root, lib, ".."), { recursive: true });
    cpSync(lib, join(root, lib), { dereference: true });
  }
  for (const a of ["sh", "ping", "sleep", "ip"]) symlinkSync("busybox", join(root, "bin", a));
  const tar = join(dir, "busybox.tar");
  const r = Bun.spawnSync(["tar", "-C", root, "-cf", tar, "."], { stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`tar: ${r.stderr.toString()}`);
  return tar;
}

beforeAll(async () => {
  if (!haveDocker) throw new Error("dockerd and the docker client are not installed: apt-get install docker.io (scripts/setup.sh does)");
  await labDown(LAB);
  await labUp({ ...LAB, hosts: 2, backend: "vxlan", store: "sqlite", binary: await ensureBinary(), agentArgs: ["--ip-masq"] });
  // The lab's own cni0 "containers" use the subnet Docker is about to take: remove the bridge (Docker brings docker0).
  for (const h of labState(LAB).hosts) await ip(["link", "del", "cni0"], h.netns);
  const s = labState(LAB);
  const x = `${LAB.name}-x`;
  updateLabState(LAB, (st) => st.namespaces.push(x)); // recorded first: labDown removes it whatever happens
  await ip(["netns", "add", x]);
  await ip(["link", "add", "vx0", "type", "veth", "peer", "name", "eth0", "netns", x], s.underlay);
  await ip(["link", "set", "vx0", "master", "br0", "up"], s.underlay);
  await ip(["addr", "add", `${OUTSIDE_IP}/24`, "dev", "eth0"], x);
  await ip(["link", "set", "eth0", "up"], x);
}, T);

afterAll(async () => {
  if (!haveDocker) return;
  for (const h of labState(LAB).hosts) await docker(h, ["rm", "-f", "fbt-c"], true).catch(() => {});
  for (const d of daemons) await stopProcess(d.pid, d.root, 20_000);
  const r = await labDown(LAB);
  if (r.errors.length) console.error(r.errors);
}, T);

describe("the guides' Docker workflow (dockerd --bip/--mtu from subnet.env)", () => {
  test(
    "Docker containers on two hosts ping each other with FORWARD DROP and reach the outside through flannel's masquerade",
    async () => {
      const hosts = labState(LAB).hosts;
      const tar = busyboxTar(labState(LAB).stateDir);
      for (const h of hosts) {
        const env = Object.fromEntries(
          readFileSync(h.subnetFile, "utf8")
            .trim()
            .split("\n")
            .map((l) => l.split("=") as [string, string]),
        );
        expect(env.FLANNEL_IPMASQ).toBe("true");
        const dir = dockerDir(h);
        mkdirSync(dir, { recursive: true });
        const script = join(dir, "cgroups.sh");
        writeFileSync(script, CGROUP_SCRIPT, { mode: 0o755 });
        const root = join(dir, "root");
        const pid = spawnDetachedIn(
          h.netns,
          [
            script,
            "/usr/sbin/dockerd",
            `--data-root=${root}`,
            `--exec-root=${join(dir, "exec")}`,
            `--pidfile=${join(dir, "docker.pid")}`,
            `-H=${sock(h)}`,
            "--storage-driver=vfs",
            `--bip=${env.FLANNEL_SUBNET}`,
            `--mtu=${env.FLANNEL_MTU}`,
            "--ip-masq=false",
          ],
          join(dir, "dockerd.log"),
        );
        daemons.push({ pid, root });
      }
      for (const h of hosts)
        await waitUntil(`dockerd in ${h.netns} answers`, 60_000, async () => {
          if (!processAlive(daemons[h.index - 1]!.pid)) throw new Error(`dockerd in ${h.netns} exited: see ${dockerDir(h)}/dockerd.log`);
          return (await docker(h, ["info", "--format", "{{.ServerVersion}}"], true)).code === 0;
        });
      for (const h of hosts) {
        await execIn(h.netns, ["iptables", "-P", "FORWARD", "DROP"]);
        await docker(h, ["import", tar, "fbt-busybox"]);
        await docker(h, ["run", "-d", "--name", "fbt-c", "fbt-busybox", "/bin/sleep", "600"]);
      }
      const ipOf = async (h: LabHost) => (await docker(h, ["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "fbt-c"])).stdout.trim();
      const [h1, h2] = [host(LAB, 1), host(LAB, 2)];
      const [ip1, ip2] = [await ipOf(h1), await ipOf(h2)];
      // Docker took the subnet flannel-bin leased for the host.
      expect(readFileSync(h1.subnetFile, "utf8")).toContain(`FLANNEL_SUBNET=${ip1.replace(/\.\d+$/, ".1")}/`);
      const ping = async (h: LabHost, to: string) =>
        (await docker(h, ["exec", "fbt-c", "ping", "-c", "2", "-W", "2", to], true)).code === 0;
      expect(await ping(h1, ip2)).toBe(true);
      expect(await ping(h2, ip1)).toBe(true);
      expect(await ping(h1, OUTSIDE_IP)).toBe(true);
      // Docker's own rules came first in FORWARD; flanneld's jump is still there, after them.
      const fwd = (await execIn(h1.netns, ["iptables", "-S", "FORWARD"])).stdout;
      expect(fwd).toContain("-A FORWARD -j DOCKER-USER");
      expect(fwd).toContain('-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD');
    },
    T,
  );
});
