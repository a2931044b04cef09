import { expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { startEtcdServer } from "./etcd-server.ts";

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

async function run(cmd: string[]): Promise<{ code: number; out: string; err: string }> {
  const p = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe", env: { ...process.env, ETCDCTL_API: "3" } });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, out, err };
}

test("starts on free ports, keeps data across restart, stop kills its PID and removes the temp data dir", async () => {
  const s = await startEtcdServer({});
  try {
    expect(s.endpoint).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(alive(s.pid)).toBe(true);
    const put = await run(["etcdctl", `--endpoints=${s.endpoint}`, "put", "/k", "v"]);
    expect(put.code).toBe(0);
    const oldPid = s.pid;
    await s.restart();
    expect(alive(oldPid)).toBe(false);
    expect(alive(s.pid)).toBe(true);
    const get = await run(["etcdctl", `--endpoints=${s.endpoint}`, "get", "/k", "--print-value-only"]);
    expect(get.out.trim()).toBe("v");
  } finally {
    const pid = s.pid;
    await s.stop();
    expect(alive(pid)).toBe(false);
    expect(existsSync(s.dataDir)).toBe(false);
  }
});

test("a port already in use fails with etcd's own message, and leaves nothing behind", async () => {
  const a = await startEtcdServer({});
  try {
    const port = Number(new URL(a.endpoint).port);
    await expect(startEtcdServer({ clientPort: port })).rejects.toThrow(/etcd exited/);
  } finally {
    await a.stop();
  }
});

test("runs inside a network namespace", async () => {
  const ns = `fbetcd${process.pid}`;
  expect((await run(["ip", "netns", "add", ns])).code).toBe(0);
  try {
    expect((await run(["ip", "-n", ns, "link", "set", "lo", "up"])).code).toBe(0);
    const s = await startEtcdServer({ netns: ns });
    try {
      const put = await run(["ip", "netns", "exec", ns, "etcdctl", `--endpoints=${s.endpoint}`, "put", "/k", "in-ns"]);
      expect(put.code).toBe(0);
      // The same address from the host namespace reaches nothing (or someone else's etcd, without our key).
      const outside = await run([
        "etcdctl",
        `--endpoints=${s.endpoint}`,
        "--dial-timeout=500ms",
        "--command-timeout=1s",
        "get",
        "/k",
        "--print-value-only",
      ]);
      expect(outside.out.trim()).not.toBe("in-ns");
    } finally {
      await s.stop();
    }
  } finally {
    await run(["ip", "netns", "del", ns]);
  }
});

test("etcd does not outlive the process that started it, even when that process is SIGKILLed", async () => {
  const script = `
    import { startEtcdServer } from ${JSON.stringify(`${import.meta.dir}/etcd-server.ts`)};
    const s = await startEtcdServer({});
    console.log(s.endpoint + " " + s.dataDir);
    await Bun.sleep(60_000);
  `;
  const child = Bun.spawn([process.execPath, "-e", script], { stdout: "pipe", stderr: "inherit" });
  let dataDir = "";
  try {
    const reader = child.stdout.getReader();
    const { value } = await Promise.race([reader.read(), Bun.sleep(15_000).then(() => ({ value: undefined }))]);
    expect(value).toBeDefined();
    const [endpoint, dir] = new TextDecoder().decode(value).trim().split(" ");
    dataDir = dir ?? "";
    expect((await fetch(`${endpoint}/health`)).ok).toBe(true);
    child.kill("SIGKILL");
    await child.exited;
    const deadline = Date.now() + 10_000;
    let down = false;
    while (!down && Date.now() < deadline) {
      down = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(500) }).then(
        () => false,
        () => true,
      );
      if (!down) await Bun.sleep(100);
    }
    expect(down).toBe(true);
  } finally {
    child.kill("SIGKILL");
    // The killed process could not remove its data dir; this test does.
    if (dataDir.startsWith("/tmp/flannel-etcd-")) await Bun.$`rm -rf ${dataDir}`.quiet();
  }
});
