// Lab plumbing: bounded commands, clear errors, PID-guarded stop, bounded waits, a real namespace and veth pair.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  GiveUp,
  LabCommandError,
  addrAdd,
  execIn,
  ip,
  linkUp,
  netnsAdd,
  netnsDel,
  netnsExists,
  processAlive,
  processArgv,
  run,
  spawnDetachedIn,
  stopProcess,
  vethAdd,
  waitFor,
} from "../../src/lab/netns.ts";
import { testName } from "../helpers/binary.ts";

const A = testName("tnsa-test");
const B = testName("tnsb-test");
const tmp = mkdtempSync(join(tmpdir(), "flannel-netns-test-"));

afterAll(async () => {
  await netnsDel(A);
  await netnsDel(B);
  rmSync(tmp, { recursive: true, force: true });
});

describe("netns plumbing", () => {
  test("a failing command names itself and its stderr; a slow one is killed at the timeout", async () => {
    const err = await run(["ip", "link", "show", "no-such-dev-xyz"]).catch((e) => e);
    expect(err).toBeInstanceOf(LabCommandError);
    expect(err.message).toContain("ip link show no-such-dev-xyz");
    expect(err.message).toMatch(/does not exist/);
    expect((await run(["false"], { allowFail: true })).code).toBe(1);
    const t0 = Date.now();
    await expect(run(["sleep", "5"], { timeoutMs: 200 })).rejects.toThrow(/timed out after 200 ms/);
    expect(Date.now() - t0).toBeLessThan(4000);
  });

  test("two namespaces joined by a veth pair reach each other; delete is idempotent", async () => {
    await netnsAdd(A);
    await netnsAdd(B);
    expect(await netnsExists(A)).toBe(true);
    await vethAdd({ name: "va", netns: A }, { name: "vb", netns: B }, 1400);
    await addrAdd(A, "va", "198.51.100.1/24");
    await addrAdd(B, "vb", "198.51.100.2/24");
    await linkUp(A, "va");
    await linkUp(B, "vb");
    const link = JSON.parse((await ip(["-j", "link", "show", "vb"], B)).stdout)[0];
    expect(link.mtu).toBe(1400);
    expect((await execIn(A, ["ping", "-c", "1", "-W", "2", "198.51.100.2"])).code).toBe(0);
    await netnsDel(B);
    await netnsDel(B);
    expect(await netnsExists(B)).toBe(false);
  });

  test("a detached process is stopped only by its PID and only if its argv still matches", async () => {
    if (!(await netnsExists(A))) await netnsAdd(A);
    const pid = spawnDetachedIn(A, ["sleep", "30"], join(tmp, "sleep.log"));
    // Until `ip netns exec` has exec'd sleep (before that the PID shows our argv, then ip's).
    await waitFor("sleep to exec", 5000, async () => (processArgv(pid)?.[0] === "sleep" ? true : undefined), 20);
    expect(await stopProcess(pid, "not-in-argv")).toBe(false);
    expect(processAlive(pid)).toBe(true);
    expect(await stopProcess(pid, "sleep")).toBe(true);
    expect(processAlive(pid)).toBe(false);
  });

  test("waitFor is bounded and gives up at once on GiveUp", async () => {
    await expect(waitFor("never", 300, async () => undefined, 50)).rejects.toThrow(/timed out after 300 ms waiting for never/);
    const t0 = Date.now();
    await expect(
      waitFor("x", 10_000, async () => {
        throw new GiveUp("dead");
      }),
    ).rejects.toThrow("dead");
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(await waitFor("y", 1000, async () => 42)).toBe(42);
  });
});
