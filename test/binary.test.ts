// The compiled binary on its own: copied into an empty folder with no node_modules anywhere above it,
// with a hostile .env and bunfig.toml beside it (a compiled binary must not read them).
import { afterAll, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ensureBinary, until } from "./helpers/agents.ts";

// /var/tmp has no node_modules above it (checked below), unlike anything inside the build tree.
const dir = mkdtempSync("/var/tmp/fb-bin-");
const ns = `fbt-bin-${Math.random().toString(36).slice(2, 7)}`;
afterAll(() => {
  Bun.spawnSync(["ip", "netns", "del", ns]);
  rmSync(dir, { recursive: true, force: true });
});

test("dist/flannel-bin alone runs --version and run with the SQLite store", async () => {
  const bin = join(dir, "flannel-bin");
  copyFileSync(ensureBinary(), bin);
  Bun.spawnSync(["chmod", "755", bin]);
  for (let d = dir; d !== "/"; d = join(d, "..")) expect(existsSync(join(d, "node_modules"))).toBe(false);
  writeFileSync(join(dir, ".env"), "FLANNELD_STORE=bogus\nFLANNELD_HEALTHZ_PORT=x\n");
  writeFileSync(join(dir, "bunfig.toml"), 'preload = ["./missing.ts"]\n');
  const env = { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" };

  const v = Bun.spawnSync([bin, "--version"], { cwd: dir, env, stdout: "pipe", stderr: "pipe" });
  expect(v.stderr.toString()).toBe("");
  expect(v.stdout.toString()).toMatch(/^\d+\.\d+\.\d+/);

  const db = join(dir, "flannel.db");
  const put = Bun.spawnSync([bin, "config", "put", '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}', "--sqlite-path", db], {
    cwd: dir,
    env,
    stdout: "pipe",
    stderr: "pipe",
  });
  expect(put.stdout.toString() + put.stderr.toString()).toContain("network config stored");
  expect(put.exitCode).toBe(0);

  for (const c of [
    ["ip", "netns", "add", ns],
    ["ip", "-n", ns, "link", "set", "lo", "up"],
    ["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"],
    ["ip", "-n", ns, "link", "set", "eth0p", "up"],
    ["ip", "-n", ns, "addr", "add", "192.0.2.10/24", "dev", "eth0"],
    ["ip", "-n", ns, "link", "set", "eth0", "up"],
    ["ip", "-n", ns, "route", "add", "default", "via", "192.0.2.254"],
  ])
    expect(Bun.spawnSync(c).exitCode).toBe(0);
  const envFile = join(dir, "subnet.env");
  const log = join(dir, "agent.log");
  const p = Bun.spawn(["ip", "netns", "exec", ns, bin, "run", "--sqlite-path", db, "--subnet-file", envFile], {
    cwd: dir,
    env,
    stdout: Bun.file(log),
    stderr: Bun.file(log),
  });
  try {
    const ok = await until(() => existsSync(envFile), 20_000);
    expect(ok ? "" : readFileSync(log, "utf8")).toBe("");
    expect(readFileSync(envFile, "utf8")).toMatch(
      /^FLANNEL_NETWORK=10\.5\.0\.0\/16\nFLANNEL_SUBNET=10\.5\.\d+\.1\/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n$/,
    );
    // The vxlan device exists with the derived MAC and MTU 1500 - 50.
    const link = JSON.parse(Bun.spawnSync(["ip", "-n", ns, "-json", "link", "show", "flannel.1"], { stdout: "pipe" }).stdout.toString());
    expect(link[0].mtu).toBe(1450);
  } finally {
    p.kill("SIGTERM");
    expect(await p.exited).toBe(0);
  }
});
