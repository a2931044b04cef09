// flanneld's command lines against the compiled binary: the setup guides' flag lines reach ready against a real
// etcd, a link named flanneld is the agent, mk-docker-opts (and its mk-docker-opts.sh link) writes the script's
// output, help fits 80 columns, and nothing sent to a pipe carries an escape byte.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { makeTestCerts } from "./harness/certs.ts";
import { type EtcdServer, startEtcdServer } from "./harness/etcd-server.ts";
import { AgentLab, type AgentHost, ensureBinary, until } from "./helpers/agents.ts";

const dir = mkdtempSync(join(tmpdir(), "fb-cli-"));
const links = () => {
  const flanneld = join(dir, "flanneld");
  const mk = join(dir, "mk-docker-opts.sh");
  if (!existsSync(flanneld)) symlinkSync(ensureBinary(), flanneld);
  if (!existsSync(mk)) symlinkSync(ensureBinary(), mk);
  return { flanneld, mk };
};
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function run(argv: string[], env: Record<string, string> = {}): { code: number; out: string; err: string } {
  const r = Bun.spawnSync(argv, {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, ...env },
    timeout: 30_000,
    killSignal: "SIGKILL",
  });
  return { code: r.exitCode ?? -1, out: r.stdout.toString(), err: r.stderr.toString() };
}

describe("setup-guide flag lines against a real etcd", () => {
  const lab = new AgentLab();
  let h: AgentHost;
  let etcd: EtcdServer | null = null;
  const procs: Subprocess[] = [];
  const PREFIX = "/kube-centos/network";
  beforeAll(async () => {
    ensureBinary();
    h = lab.addHost();
    etcd = await startEtcdServer({ netns: h.ns, host: "127.0.0.1" });
    const put = run([
      "ip",
      "netns",
      "exec",
      h.ns,
      ensureBinary(),
      "config",
      "put",
      '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}',
      `-etcd-endpoints=${etcd.endpoint}`,
      `-etcd-prefix=${PREFIX}`,
    ]);
    expect(put.code).toBe(0);
  });
  afterAll(async () => {
    for (const p of procs) p.kill("SIGKILL");
    await Promise.all(procs.map((p) => p.exited));
    await etcd?.stop();
    await lab.cleanup();
  });

  const lines: [string, (ep: string) => string[], string][] = [
    [
      "flanneld -etcd-endpoints=… -etcd-prefix=… (a link named flanneld, no subcommand)",
      (ep) => [`-etcd-endpoints=${ep}`, `-etcd-prefix=${PREFIX}`],
      "flanneld",
    ],
    [
      "FLANNEL_OPTIONS with glog flags: --logtostderr=false --log_dir=… --etcd-endpoints=… --iface=…",
      (ep) => [
        "--logtostderr=false",
        `--log_dir=${join(dir, "logs")}/`,
        `--etcd-endpoints=${ep}`,
        `--etcd-prefix=${PREFIX}`,
        "--iface=eth0",
      ],
      "flanneld",
    ],
    [
      "flannel-bin without a command, klog's -v=2 -vmodule",
      (ep) => ["-v=2", "-vmodule=main=3", `-etcd-endpoints=${ep}`, `-etcd-prefix=${PREFIX}`],
      "flannel-bin",
    ],
    [
      "--iface-can-reach=<the etcd host>",
      (ep) => [`-etcd-endpoints=${ep}`, `-etcd-prefix=${PREFIX}`, "--iface-can-reach=192.0.2.254"],
      "flanneld",
    ],
  ];
  for (const [name, flags, as] of lines) {
    test(`${name}: reaches ready`, async () => {
      const bin = as === "flanneld" ? links().flanneld : ensureBinary();
      const p = Bun.spawn(["ip", "netns", "exec", h.ns, bin, ...flags(etcd!.endpoint), "--subnet-file", h.subnetFile], {
        stdout: Bun.file(h.logFile),
        stderr: Bun.file(h.logFile),
      });
      procs.push(p);
      expect(await until(() => lab.health(h, "/readyz") === 200, 20_000)).toBe(true);
      p.kill("SIGTERM");
      expect(await p.exited).toBe(0);
      if (name.includes("log_dir")) {
        const file = readFileSync(join(dir, "logs", "flanneld.log"), "utf8");
        expect(file).toMatch(/^\S+Z info \[agent\] using the etcd store at /m);
        expect(file).toContain("[agent] ready: ");
        expect(lab.log(h)).toContain(`logging to ${join(dir, "logs", "flanneld.log")}`);
      }
      if (name.includes("-v=2")) expect(lab.log(h)).toContain("-vmodule is accepted for flanneld compatibility");
      if (name.includes("can-reach")) expect(lab.log(h)).toContain("using interface eth0");
    });
  }
});

describe("TLS failures say what is wrong", () => {
  test("a server that wants a client certificate: the error says so; an https URL on a plain port: it says that", async () => {
    const certs = await makeTestCerts({ prefix: "fb-cli-tls-" });
    const secure = await startEtcdServer({ tls: { certFile: certs.serverCertFile, keyFile: certs.serverKeyFile, caFile: certs.caFile } });
    const plain = await startEtcdServer({});
    try {
      const get = (ep: string, extra: string[] = []) =>
        run([ensureBinary(), "config", "get", "--etcd-endpoints", ep, "--etcd-cafile", certs.caFile, ...extra]);
      const noCert = get(secure.endpoint);
      expect(noCert.code).toBe(1);
      expect(noCert.err).toContain("the server requires a client certificate and none was given (set --etcd-certfile and --etcd-keyfile)");
      expect(get(secure.endpoint, ["--etcd-certfile", certs.clientCertFile, "--etcd-keyfile", certs.clientKeyFile]).err).toContain(
        "no network config in the etcd store",
      );
      const wrongPort = get(plain.endpoint.replace("http:", "https:"));
      expect(wrongPort.err).toContain("it probably does not speak TLS on this port");
    } finally {
      await secure.stop();
      await plain.stop();
      await certs.remove();
    }
  });
});

describe("the command line", () => {
  test("flanneld without store flags uses flanneld's default store: etcd on 127.0.0.1", async () => {
    const lab = new AgentLab();
    try {
      const h = lab.addHost();
      const p = Bun.spawn(["ip", "netns", "exec", h.ns, links().flanneld, "--healthz-port=0", "--subnet-file", h.subnetFile], {
        stdout: Bun.file(h.logFile),
        stderr: Bun.file(h.logFile),
      });
      expect(await until(() => lab.log(h).includes("etcd unavailable at every endpoint: http://127.0.0.1:4001"), 15_000)).toBe(true);
      p.kill("SIGTERM");
      expect(await p.exited).toBe(0);
    } finally {
      await lab.cleanup();
    }
  });

  test("flanneld --version and a flanneld flag we do not have yet", () => {
    const { flanneld } = links();
    expect(run([flanneld, "--version"]).out).toMatch(/^\d+\.\d+\.\d+/);
    const r = run([flanneld, "--public-ipv6=fd00::1"]);
    expect(r.code).toBe(2);
    expect(r.err).toContain("--public-ipv6 is a flanneld flag that flannel-bin does not support yet");
  });

  test("help at 80 columns when piped, grouped, and no escape byte in any piped output", () => {
    for (const argv of [["--help"], ["run", "--help"], ["config", "put", "--help"], ["leases", "--help"], ["lab", "up", "--help"]]) {
      const r = run([ensureBinary(), ...argv]);
      expect(r.code).toBe(0);
      for (const l of r.out.split("\n")) expect(l.length).toBeLessThanOrEqual(80);
      expect(r.out + r.err).not.toContain("\x1b");
    }
    const h = run([ensureBinary(), "run", "--help"]).out;
    expect(h).toContain("\nStore flags:\n");
    expect(h).toContain("\nLogging flags:\n");
    const errs = [
      run([ensureBinary(), "run", "--store=redis"]),
      run([ensureBinary(), "nope"]),
      run([ensureBinary(), "leases", "--sqlite-path", join(dir, "none.db")]),
    ];
    for (const r of errs) {
      expect(r.code).not.toBe(0);
      expect(r.out + r.err).not.toContain("\x1b");
    }
    expect(errs[0]!.err).toBe('error invalid value "redis" for flag --store: expected one of sqlite, etcd, nats\n');
  });

  test("on a terminal (script(1)): help wraps at its width; NO_COLOR turns colour off", () => {
    const tty = (cmd: string, env: Record<string, string> = {}) => run(["script", "-qec", cmd, "/dev/null"], env).out.replaceAll("\r", "");
    const wide = tty(`stty cols 120; ${ensureBinary()} run --help`).split("\n");
    expect(Math.max(...wide.map((l) => l.length))).toBeGreaterThan(80);
    expect(Math.max(...wide.map((l) => l.length))).toBeLessThanOrEqual(120);
    // consola leaves colour off whenever CI is set (as it is in CI runs), so the terminal case runs without it.
    expect(tty(`env -u CI ${ensureBinary()} run --store=redis`)).toContain("\x1b["); // colour on a terminal
    expect(tty(`env -u CI ${ensureBinary()} run --store=redis`, { NO_COLOR: "1" })).not.toContain("\x1b");
  });

  test("mk-docker-opts and the mk-docker-opts.sh link write the script's output", () => {
    const env = join(dir, "subnet.env");
    writeFileSync(env, "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n");
    const out = join(dir, "docker");
    const { mk } = links();
    let r = run([mk, "-f", env, "-k", "DOCKER_NETWORK_OPTIONS", "-d", out]);
    expect(r.code).toBe(0);
    expect(readFileSync(out, "utf8")).toBe(
      'DOCKER_OPT_BIP="--bip=10.5.72.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=false"\nDOCKER_OPT_MTU="--mtu=1450"\nDOCKER_NETWORK_OPTIONS=" --bip=10.5.72.1/24 --ip-masq=false --mtu=1450"\n',
    );
    writeFileSync(env, "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n");
    r = run([ensureBinary(), "mk-docker-opts", "-f", env, "-c", "-d", out]);
    expect(r.code).toBe(0);
    expect(readFileSync(out, "utf8")).toBe('DOCKER_OPTS=" --bip=10.5.72.1/24 --ip-masq=true --mtu=1450"\n');
    r = run([mk, "-h"]);
    expect(r.code).toBe(1);
    expect(r.err.startsWith(`${mk} [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]\n`)).toBe(true);
  });

  test("mk-docker-opts: the route-conflict check, in a namespace whose routing table already has the subnet", async () => {
    const lab = new AgentLab();
    try {
      const h = lab.addHost();
      Bun.spawnSync(["ip", "-n", h.ns, "route", "add", "10.5.72.0/24", "via", "192.0.2.9", "dev", "eth0"]);
      const env = join(dir, "subnet2.env");
      writeFileSync(env, "FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\n");
      mkdirSync(join(dir, "d2"), { recursive: true });
      const r = run(["ip", "netns", "exec", h.ns, ensureBinary(), "mk-docker-opts", "-f", env, "-d", join(dir, "d2", "opts")]);
      expect(r.code).toBe(1);
      // The line as `ip route show` prints it (iproute2 ends it with a space), as the script's grep passes it on.
      expect(r.err).toBe("Your routing table already contains the subnet: 10.5.72.0/24 via 192.0.2.9 dev eth0 \n");
      expect(readFileSync(join(dir, "d2", "opts"), "utf8")).toContain("DOCKER_OPTS="); // written before the check, as the script
    } finally {
      await lab.cleanup();
    }
  });
});
