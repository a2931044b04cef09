// install.sh under a real systemd: two Debian 12 machines booted with systemd-nspawn, each in a lab host's network
// namespace; etcd and an HTTP server (busybox httpd serving dist/release/) in the lab's underlay namespace, never in
// the root namespace. The installer is fetched and run the way operators do: curl … | sh -s - <flags>.
// The tests run in order on the same machines (m1: download installs, restart, purge; m2: CPU pick, air gap).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { UNDERLAY_GATEWAY, labDown, labUp } from "../../src/lab/lab.ts";
import {
  addrAdd,
  bridgeAdd,
  defaultRouteAdd,
  ip,
  linkSetMaster,
  linkUp,
  netnsAdd,
  spawnDetachedIn,
  stopProcess,
  vethAdd,
} from "../../src/lab/netns.ts";
import { startLabServer } from "../../src/lab/servers.ts";
import { etcdctl, labState, testName, updateLabState, waitUntil } from "../e2e/helpers.ts";
import { type Machine, bootMachine, machineExec, machineSh, stopMachine } from "./machine.ts";
import { ensureRelease } from "./release-files.ts";
import { unmountUnder, unpackRootfs } from "./rootfs.ts";

const LAB = testName("ins");
const HTTP = `http://${UNDERLAY_GATEWAY}:8080`;
const ETCD = `http://${UNDERLAY_GATEWAY}:2379`;
const SUBNETS = "/coreos.com/network/subnets/";
const lab = { name: LAB };

let work = "";
let rootDir = "";
let release = "";
let httpdPid: number | null = null;
const nspawnPids: { pid: number; name: string }[] = [];
let m1: Machine;
let m2: Machine;
const timings: Record<string, number> = {};

async function timed<T>(what: string, f: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  try {
    return await f();
  } finally {
    timings[what] = Math.round(performance.now() - t0);
  }
}

/** The service's identity and state (InvocationID changes on every start). */
async function unitState(m: Machine): Promise<Record<string, string>> {
  const r = await machineExec(m, [
    "systemctl",
    "show",
    "flannel-bin.service",
    "-p",
    "Type,ActiveState,SubState,InvocationID,MainPID,NRestarts,WatchdogUSec,LoadState",
  ]);
  return Object.fromEntries(
    r.stdout
      .trim()
      .split("\n")
      .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
  );
}

async function subnetEnv(m: Machine): Promise<Record<string, string>> {
  const r = await machineExec(m, ["cat", "/run/flannel/subnet.env"]);
  return Object.fromEntries(
    r.stdout
      .trim()
      .split("\n")
      .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
  );
}

async function leaseKeys(): Promise<string[]> {
  const out = await etcdctl(labState(lab).underlay, ETCD, ["get", "--prefix", SUBNETS, "--keys-only"]);
  return out.split("\n").filter((l) => l.startsWith(SUBNETS));
}

/** "10.5.72.1/24" -> etcd key of that lease, "/coreos.com/network/subnets/10.5.72.0-24". */
function leaseKey(flannelSubnet: string): string {
  const [addr, len] = flannelSubnet.split("/") as [string, string];
  const o = addr.split(".").map(Number);
  return `${SUBNETS}${o[0]}.${o[1]}.${o[2]}.${(o[3] ?? 1) - 1}-${len}`;
}

/** Everything the installer could touch in the machine: file list with sizes, modes and hashes of our files. */
async function fsSnapshot(m: Machine): Promise<string> {
  const r = await machineSh(
    m,
    "find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp -o -path /var/tmp -o -path /var/log " +
      "-o -path /var/lib/systemd -o -path /var/cache -o -path /root \\) -prune -o -printf '%p %y %M %l\\n' | sort; " +
      "ls -la /run/flannel 2>&1 || true; sha256sum /usr/local/bin/* /etc/systemd/system/flannel-bin.service /etc/flannel-bin/* 2>&1 || true",
    { timeoutMs: 60_000 },
  );
  return r.stdout;
}

/** Exit 0 and nothing on stderr but the installer's warnings. */
function expectOk(r: { code: number; stdout: string; stderr: string }): void {
  const other = r.stderr.split("\n").filter((l) => l !== "" && !l.startsWith("[flannel-bin install] warning:"));
  expect({ code: r.code, stderr: other, stdout: r.code === 0 ? "" : r.stdout }).toEqual({ code: 0, stderr: [], stdout: "" });
}

/** Runs the installer from the lab's web server, as an operator would: curl -fsSL …/install.sh | <shell> -s - args. */
function curlInstall(m: Machine, folder: string, args: string[], env: Record<string, string> = {}, shell = "sh") {
  const quoted = args.map((a) => `'${a}'`).join(" ");
  return machineSh(m, `curl -fsSL ${HTTP}/${folder}/install.sh | ${shell} -s - ${quoted}`, {
    env: { INSTALL_FLANNEL_BIN_URL: `${HTTP}/${folder}`, ...env },
    timeoutMs: 120_000,
    allowFail: true,
  });
}

/** A container namespace behind `hostNetns`'s cni0, addressed from the machine's subnet.env (as docker --bip would). */
async function addContainer(hostNetns: string, name: string, env: Record<string, string>): Promise<string> {
  const [gw, len] = (env.FLANNEL_SUBNET ?? "").split("/") as [string, string];
  const o = gw.split(".").map(Number);
  const addr = `${o[0]}.${o[1]}.${o[2]}.${(o[3] ?? 1) + 1}`;
  await netnsAdd(name);
  updateLabState(lab, (s) => s.namespaces.push(name));
  await bridgeAdd(hostNetns, "cni0", Number(env.FLANNEL_MTU));
  await addrAdd(hostNetns, "cni0", `${gw}/${len}`);
  await linkUp(hostNetns, "cni0");
  await vethAdd({ name: `v${name.slice(-2)}`, netns: hostNetns }, { name: "eth0", netns: name }, Number(env.FLANNEL_MTU));
  await linkSetMaster(hostNetns, `v${name.slice(-2)}`, "cni0");
  await linkUp(hostNetns, `v${name.slice(-2)}`);
  await addrAdd(name, "eth0", `${addr}/${len}`);
  await linkUp(name, "eth0");
  await linkUp(name, "lo");
  await defaultRouteAdd(name, gw);
  return addr;
}

async function ping(
  fromNetns: string,
  to: string,
  count: number,
  intervalS = "0.2",
): Promise<{ sent: number; received: number; out: string }> {
  const proc = Bun.spawn(["ip", "netns", "exec", fromNetns, "ping", "-n", "-i", intervalS, "-c", String(count), "-W", "1", to], {
    stdout: "pipe",
    stderr: "pipe",
  });
  const killer = setTimeout(() => proc.kill("SIGKILL"), count * 1000 + 10_000);
  const out = await new Response(proc.stdout).text();
  clearTimeout(killer);
  await proc.exited;
  const m = out.match(/(\d+) packets transmitted, (\d+) received/);
  return { sent: Number(m?.[1] ?? 0), received: Number(m?.[2] ?? 0), out };
}

beforeAll(async () => {
  const t0 = performance.now();
  release = await timed("release build (or reuse)", async () => ensureRelease());
  work = mkdtempSync("/var/tmp/flannel-bin-install-test-");
  rootDir = await timed("debootstrap (cold) or unpack of the cached root", async () => unpackRootfs(work));

  // What the lab serves: the release as built, one with a wrong checksum, and nothing (a download error).
  const www = join(work, "www");
  for (const d of ["release", "tampered"]) mkdirSync(join(www, d), { recursive: true });
  for (const f of [
    "install.sh",
    "flannel-bin-linux-amd64",
    "flannel-bin-linux-amd64-baseline",
    "flannel-bin-linux-arm64",
    "sha256sum.txt",
  ]) {
    symlinkSync(join(release, f), join(www, "release", f));
    if (f !== "sha256sum.txt") symlinkSync(join(release, f), join(www, "tampered", f));
  }
  const sums = readFileSync(join(release, "sha256sum.txt"), "utf8");
  writeFileSync(
    join(www, "tampered", "sha256sum.txt"),
    sums.replace(/^[0-9a-f]{64}(?= {2}flannel-bin-linux-amd64(-baseline)?$)/gm, "0".repeat(64)),
  );

  await labUp({ name: LAB, hosts: 2, topologyOnly: true });
  const s = labState(lab);
  await startLabServer("etcd", s.underlay, UNDERLAY_GATEWAY, s.stateDir, (srv) => updateLabState(lab, (st) => st.servers.push(srv)));
  await etcdctl(s.underlay, ETCD, ["put", "/coreos.com/network/config", '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}']);
  httpdPid = spawnDetachedIn(s.underlay, ["busybox", "httpd", "-f", "-p", `${UNDERLAY_GATEWAY}:8080`, "-h", www], join(work, "httpd.log"));

  const boot = (i: number) =>
    bootMachine(
      `${LAB}-m${i}`,
      s.hosts[i - 1]!.netns,
      rootDir,
      join(work, `m${i}.log`),
      (pid) => nspawnPids.push({ pid, name: `${LAB}-m${i}` }),
      [[release, "/mnt/release"]],
    );
  [m1, m2] = await timed("boot of two machines", () => Promise.all([boot(1), boot(2)]));
  timings["setup total"] = Math.round(performance.now() - t0);
}, 1_800_000);

afterAll(async () => {
  for (const { pid, name } of nspawnPids) await stopMachine(pid, name, rootDir).catch((e) => console.error(`stop ${name}: ${e}`));
  if (httpdPid !== null) await stopProcess(httpdPid, `${UNDERLAY_GATEWAY}:8080`);
  const down = await labDown(lab);
  if (down.errors.length) console.error(`lab down: ${down.errors.join("; ")}`);
  if (work) {
    unmountUnder(work);
    rmSync(work, { recursive: true, force: true });
  }
  console.log(`install test timings (ms): ${JSON.stringify(timings)}`);
}, 120_000);

describe("install.sh under systemd (Debian 12, systemd-nspawn)", () => {
  let before1 = "";
  let first: Record<string, string> = {};
  let env1: Record<string, string> = {};

  test("curl | sh -s - --etcd-endpoints=… gives an active Type=notify unit, subnet.env and a lease in etcd", async () => {
    before1 = await fsSnapshot(m1);
    const r = await timed("first install, curl | sh to active", () =>
      curlInstall(m1, "release", [`--etcd-endpoints=${ETCD}`], { FLANNELD_HEALTHZ_PORT: "8472" }),
    );
    expectOk(r);
    await waitUntil("flannel-bin.service is active", 20_000, async () => (await unitState(m1)).ActiveState === "active");
    first = await unitState(m1);
    expect(first.Type).toBe("notify");
    expect(first.SubState).toBe("running");
    env1 = await subnetEnv(m1);
    expect(env1.FLANNEL_SUBNET).toMatch(/^10\.5\.\d+\.1\/24$/);
    expect(await leaseKeys()).toContain(leaseKey(env1.FLANNEL_SUBNET!));
    // The env file (0600) carried FLANNELD_HEALTHZ_PORT into the service.
    expect((await machineExec(m1, ["stat", "-c", "%a", "/etc/flannel-bin/flannel-bin.env"])).stdout.trim()).toBe("600");
    expect((await machineExec(m1, ["curl", "-sf", "http://127.0.0.1:8472/healthz"], { allowFail: true })).code).toBe(0);
    const unit = (await machineExec(m1, ["cat", "/etc/systemd/system/flannel-bin.service"])).stdout;
    for (const line of [
      "Type=notify",
      "Restart=always",
      "RestartSec=5",
      "After=network-online.target",
      "Wants=network-online.target",
      "Before=docker.service",
      "Environment=BUN_GC_TIMER_DISABLE=1 MIMALLOC_PURGE_DELAY=0",
      "EnvironmentFile=-/etc/flannel-bin/flannel-bin.env",
      "NoNewPrivileges=yes",
      `ExecStart=/usr/local/bin/flannel-bin run --etcd-endpoints=${ETCD}`,
    ])
      expect(unit.split("\n")).toContain(line);
    expect(unit).toMatch(/^WatchdogSec=/m);
    expect(unit).toMatch(/^CapabilityBoundingSet=.*CAP_NET_ADMIN/m);
    expect(unit).toMatch(/^ReadWritePaths=.*\/run\/flannel .*\/var\/lib\/flannel-bin/m);
    expect(unit).not.toContain("MemoryDenyWriteExecute");
    expect(unit).not.toContain("RuntimeDirectory");
    expect((await machineExec(m1, ["systemctl", "is-enabled", "flannel-bin.service"])).stdout.trim()).toBe("enabled");
  }, 180_000);

  test("ExecStartPost writes the guides' docker options (mk-docker-opts.sh -k DOCKER_NETWORK_OPTIONS -d /run/flannel/docker)", async () => {
    const link = (await machineExec(m1, ["readlink", "/usr/local/bin/mk-docker-opts.sh"])).stdout.trim();
    expect(link).toBe("flannel-bin");
    const unit = (await machineExec(m1, ["cat", "/etc/systemd/system/flannel-bin.service"])).stdout;
    expect(unit).toContain("\nExecStartPost=/usr/local/bin/mk-docker-opts.sh -k DOCKER_NETWORK_OPTIONS -d /run/flannel/docker\n");
    const opts = (await machineExec(m1, ["cat", "/run/flannel/docker"])).stdout;
    expect(opts).toContain(`DOCKER_NETWORK_OPTIONS=" --bip=${env1.FLANNEL_SUBNET} --ip-masq=true --mtu=${env1.FLANNEL_MTU}"`);
  });

  test("a second install of the same version changes nothing and does not restart the service", async () => {
    const r = await timed("second install (no change)", () =>
      curlInstall(m1, "release", [`--etcd-endpoints=${ETCD}`], { FLANNELD_HEALTHZ_PORT: "8472" }),
    );
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("no change detected");
    expect(r.stdout).toContain("not downloading it again");
    const now = await unitState(m1);
    expect({ id: now.InvocationID, pid: now.MainPID, state: now.ActiveState }).toEqual({
      id: first.InvocationID,
      pid: first.MainPID,
      state: "active",
    });
  }, 180_000);

  test("a tampered checksum or a failed download exits non-zero and changes nothing (dash and busybox sh)", async () => {
    const snap = await fsSnapshot(m1);
    for (const shell of ["sh", "busybox sh"]) {
      const r = await curlInstall(m1, "tampered", [`--etcd-endpoints=${ETCD}`, "--ip-masq"], { FLANNELD_HEALTHZ_PORT: "9999" }, shell);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/sha256 of flannel-bin-linux-amd64 is [0-9a-f]{64}, sha256sum.txt says 0{64}: nothing was installed/);
      expect(await fsSnapshot(m1)).toBe(snap);
    }
    const gone = await machineSh(m1, `curl -fsSL ${HTTP}/release/install.sh | sh -s - --ip-masq`, {
      env: { INSTALL_FLANNEL_BIN_URL: `${HTTP}/no-such-folder`, INSTALL_FLANNEL_BIN_BIN_DIR: "/opt/flannel-bin/bin" },
      allowFail: true,
    });
    expect(gone.code).not.toBe(0);
    expect(gone.stderr).toContain(`download of ${HTTP}/no-such-folder/sha256sum.txt failed`);
    expect(await fsSnapshot(m1)).toBe(snap);
    expect((await machineExec(m1, ["test", "-e", "/opt/flannel-bin"], { allowFail: true })).code).not.toBe(0);
    const now = await unitState(m1);
    expect({ id: now.InvocationID, state: now.ActiveState }).toEqual({ id: first.InvocationID, state: "active" });
  }, 180_000);

  test("refuses clearly: not root, an unsupported architecture", async () => {
    const install = `curl -fsSL ${HTTP}/release/install.sh -o /tmp/install.sh`;
    await machineSh(m2, install);
    const user = await machineSh(m2, "setpriv --reuid=65534 --regid=65534 --clear-groups sh /tmp/install.sh", { allowFail: true });
    expect({ code: user.code, err: user.stderr }).toMatchObject({ code: 1, err: expect.stringContaining("must run as root") });
    const arch = await machineSh(m2, "setarch i686 sh /tmp/install.sh", {
      allowFail: true,
      env: { INSTALL_FLANNEL_BIN_URL: `${HTTP}/release` },
    });
    expect(arch.code).toBe(1);
    expect(arch.stderr).toContain(
      "unsupported architecture i686: flannel-bin is built for x86_64 (amd64, amd64-baseline) and aarch64 (arm64)",
    );
    expect((await machineExec(m2, ["ls", "/usr/local/bin"])).stdout.trim()).toBe("");
  }, 60_000);

  test("a CPU without AVX2 gets the baseline build", async () => {
    // /proc/cpuinfo without avx2, seen only by this one installer run (its own mount namespace).
    const r = await machineSh(
      m2,
      "grep -vw avx2 /proc/cpuinfo > /tmp/cpuinfo && unshare -m sh -c " +
        `'mount --bind /tmp/cpuinfo /proc/cpuinfo && curl -fsSL ${HTTP}/release/install.sh | sh -s -'`,
      {
        env: {
          INSTALL_FLANNEL_BIN_URL: `${HTTP}/release`,
          INSTALL_FLANNEL_BIN_SKIP_START: "true",
          INSTALL_FLANNEL_BIN_SKIP_ENABLE: "true",
        },
        allowFail: true,
        timeoutMs: 120_000,
      },
    );
    expectOk(r);
    expect(r.stdout).toContain("flannel-bin-linux-amd64-baseline");
    const want = readFileSync(join(release, "sha256sum.txt"), "utf8").match(/^([0-9a-f]{64}) {2}flannel-bin-linux-amd64-baseline$/m)?.[1];
    expect((await machineExec(m2, ["sha256sum", "/usr/local/bin/flannel-bin"])).stdout.split(" ")[0]).toBe(want!);
    expect((await unitState(m2)).ActiveState).toBe("inactive");
  }, 180_000);

  test("air gap: INSTALL_FLANNEL_BIN_SKIP_DOWNLOAD=true installs the binary already in place, downloading nothing", async () => {
    // The operator copies the binary and install.sh over by hand (here from the read-only /mnt/release bind).
    await machineSh(
      m2,
      "install -m 0755 /mnt/release/flannel-bin-linux-amd64 /usr/local/bin/flannel-bin && cp /mnt/release/install.sh /root/",
      {
        timeoutMs: 120_000,
      },
    );
    const r = await timed("air-gap install to active", () =>
      // No reachable web server: port 9 (discard) on the underlay gateway answers nothing.
      machineSh(m2, "busybox sh /root/install.sh", {
        env: {
          INSTALL_FLANNEL_BIN_SKIP_DOWNLOAD: "true",
          INSTALL_FLANNEL_BIN_URL: `http://${UNDERLAY_GATEWAY}:9/none`,
          FLANNELD_ETCD_ENDPOINTS: ETCD,
        },
        timeoutMs: 120_000,
        allowFail: true,
      }),
    );
    expectOk(r);
    expect(r.stdout).not.toContain("downloading");
    await waitUntil("flannel-bin.service is active on m2", 20_000, async () => (await unitState(m2)).ActiveState === "active");
    const env2 = await subnetEnv(m2);
    expect(await leaseKeys()).toContain(leaseKey(env2.FLANNEL_SUBNET!));
    expect(env2.FLANNEL_SUBNET).not.toBe(env1.FLANNEL_SUBNET);
  }, 240_000);

  test("systemctl restart keeps the subnet and loses no ping between containers", async () => {
    const s = labState(lab);
    const env2 = await subnetEnv(m2);
    const c1 = testName("insc1");
    const c2 = testName("insc2");
    await addContainer(s.hosts[0]!.netns, c1, env1);
    const ip2 = await addContainer(s.hosts[1]!.netns, c2, env2);
    await waitUntil(`${c1} reaches ${ip2}`, 30_000, async () => (await ping(c1, ip2, 1)).received === 1, 500);
    const before = await unitState(m1);
    const pinging = ping(c1, ip2, 50); // 10 s at 0.2 s
    await Bun.sleep(1500);
    await timed("systemctl restart to active", () =>
      machineExec(m1, ["systemctl", "restart", "flannel-bin.service"], { timeoutMs: 60_000 }),
    );
    const p = await pinging;
    const after = await unitState(m1);
    expect(after.InvocationID).not.toBe(before.InvocationID);
    expect(after.ActiveState).toBe("active");
    expect({ sent: p.sent, received: p.received }).toEqual({ sent: 50, received: 50 });
    expect((await subnetEnv(m1)).FLANNEL_SUBNET).toBe(env1.FLANNEL_SUBNET!);
    expect(await leaseKeys()).toContain(leaseKey(env1.FLANNEL_SUBNET!));
  }, 180_000);

  test("flannel-bin-uninstall.sh --purge leaves no file, unit, device, route or rule behind", async () => {
    const s = labState(lab);
    const h1 = s.hosts[0]!.netns;
    // The lab's own cni0/container are not the agent's: remove them first so the comparison is about the agent.
    await ip(["link", "delete", "cni0"], h1, { allowFail: true });
    // What the purge must remove is really there first: the vxlan device, the route to m2's subnet, the FLANNEL-* chains.
    const linksBefore = JSON.parse((await ip(["-j", "link", "show"], h1)).stdout) as { ifname: string }[];
    expect(linksBefore.map((l) => l.ifname)).toContain("flannel.1");
    expect((await ip(["route", "show", "table", "all", "proto", "159"], h1)).stdout.trim()).not.toBe("");
    const rulesBefore = await machineSh(m1, "iptables-save 2>/dev/null | grep -c FLANNEL- || true");
    expect(Number(rulesBefore.stdout.trim())).toBeGreaterThan(0);
    const r = await timed("uninstall --purge", () =>
      machineExec(m1, ["/usr/local/bin/flannel-bin-uninstall.sh", "--purge"], { allowFail: true }),
    );
    expectOk(r);
    expect(await fsSnapshot(m1)).toBe(before1);
    expect((await machineExec(m1, ["test", "-e", "/run/flannel"], { allowFail: true })).code).not.toBe(0);
    expect(
      (await machineExec(m1, ["systemctl", "list-unit-files", "--no-legend", "flannel-bin*"], { allowFail: true })).stdout.trim(),
    ).toBe("");
    // systemd may keep a "not-found" stub in memory until it collects it; what matters is that no unit is loadable.
    expect((await unitState(m1)).LoadState).toBe("not-found");
    const links = JSON.parse((await ip(["-j", "link", "show"], h1)).stdout) as { ifname: string }[];
    expect(links.map((l) => l.ifname).filter((n) => n.startsWith("flannel"))).toEqual([]);
    expect((await ip(["route", "show", "table", "all", "proto", "159"], h1)).stdout.trim()).toBe("");
    const rules = await machineSh(
      m1,
      "iptables-save 2>/dev/null | grep -c FLANNEL- || true; nft list tables 2>/dev/null | grep -c flannel || true",
    );
    expect(rules.stdout.trim().split("\n")).toEqual(["0", "0"]);
  }, 120_000);
});
