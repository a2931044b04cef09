// The lab itself, without the real agent: topology, state file, exact cleanup (also after a failed up).
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LabError, labDown, labStatus, labUp, readLabState } from "../../src/lab/lab.ts";
import { execIn, ip, netnsList, run } from "../../src/lab/netns.ts";
import { ensureBinary, testName } from "./helpers.ts";

// Explicit: these tests wait (bounded) for agents and kernels, longer than bun's default per-test timeout.
const TEST_TIMEOUT_MS = 90_000;
const TOPO = { name: testName("e2topo") };
const FAIL = { name: testName("e2fail") };
const tmp = mkdtempSync(join(tmpdir(), "flannel-lab-test-"));

afterAll(async () => {
  await labDown(TOPO);
  await labDown(FAIL);
  rmSync(tmp, { recursive: true, force: true });
});

const ours = async (prefix: string) => (await netnsList()).filter((n) => n.startsWith(`${prefix}-`));

describe("lab topology", () => {
  test(
    "hosts reach each other over the underlay, nothing lands in the root namespace, down removes exactly it",
    async () => {
      const rootLinksBefore = (await ip(["-o", "link", "show"])).stdout.split("\n").length;
      const report = await labUp({ ...TOPO, hosts: 3, topologyOnly: true });
      expect(report.pairs).toHaveLength(6);
      expect(report.pairs.every((p) => p.ok)).toBe(true);

      const s = readLabState(TOPO)!;
      expect(s.namespaces).toEqual([`${TOPO.name}-ul`, `${TOPO.name}-h1`, `${TOPO.name}-h2`, `${TOPO.name}-h3`]);
      expect((await ours(TOPO.name)).sort()).toEqual([...s.namespaces].sort());
      // Each host: eth0 192.0.2.(10+i)/24 and a default route via the underlay bridge (what interface selection uses).
      const r = await execIn(`${TOPO.name}-h2`, ["ip", "-j", "route", "show", "default"]);
      expect(JSON.parse(r.stdout)[0]).toMatchObject({ gateway: "192.0.2.1", dev: "eth0" });
      const a = await ip(["-j", "-4", "addr", "show", "eth0"], `${TOPO.name}-h2`);
      expect(JSON.parse(a.stdout)[0].addr_info[0]).toMatchObject({ local: "192.0.2.12", prefixlen: 24 });
      expect((await ip(["-o", "link", "show"])).stdout.split("\n").length).toBe(rootLinksBefore);

      const st = await labStatus(TOPO);
      expect(st.hosts.map((h) => h.host)).toEqual([`${TOPO.name}-h1`, `${TOPO.name}-h2`, `${TOPO.name}-h3`]);

      await expect(labUp({ ...TOPO, topologyOnly: true })).rejects.toThrow(/already exists/);

      const down = await labDown(TOPO);
      expect(down.errors).toEqual([]);
      expect(await ours(TOPO.name)).toEqual([]);
      expect(existsSync(s.stateDir)).toBe(false);
      // A second down is a no-op.
      expect(await labDown(TOPO)).toEqual({ removed: [], errors: [] });
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a failed up (agent exits) names the agent log, and down still removes everything it created",
    async () => {
      const fake = join(tmp, "fake-agent");
      writeFileSync(fake, '#!/bin/sh\n[ "$1" = config ] && exit 0\necho "fake agent: cannot start" >&2\nexit 3\n');
      chmodSync(fake, 0o755);
      const err = await labUp({ ...FAIL, hosts: 2, binary: fake }).catch((e) => e);
      expect(err).toBeInstanceOf(LabError);
      expect(String(err.message)).toContain("fake agent: cannot start");
      expect(String(err.message)).toContain(`lab down --name ${FAIL.name}`);
      const s = readLabState(FAIL)!;
      expect(s.namespaces).toEqual([`${FAIL.name}-ul`, `${FAIL.name}-h1`, `${FAIL.name}-h2`]);
      expect((await ours(FAIL.name)).sort()).toEqual([...s.namespaces].sort());

      const down = await labDown(FAIL);
      expect(down.errors).toEqual([]);
      expect(await ours(FAIL.name)).toEqual([]);
      expect(existsSync(s.stateDir)).toBe(false);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "not root: a clear error, nothing created",
    async () => {
      const code =
        'const { labUp } = await import("' +
        join(import.meta.dir, "../../src/lab/lab.ts") +
        '"); ' +
        'try { await labUp({ name: "e2user", topologyOnly: true }); } catch (e) { console.log(e.message); }';
      const r = await run(["runuser", "-u", "nobody", "--", process.execPath, "-e", code], { timeoutMs: 30_000, allowFail: true });
      expect(r.stdout.trim()).toBe("flannel-bin lab needs root (network namespaces)");
      expect(await ours("e2user")).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "bad options are refused before anything is created",
    async () => {
      await expect(labUp({ name: "Bad Name" })).rejects.toThrow(/lab name/);
      await expect(labUp({ name: "e2bad", hosts: 0, topologyOnly: true })).rejects.toThrow(/--hosts/);
      await expect(labUp({ name: "e2bad", backend: "udp" as never, topologyOnly: true })).rejects.toThrow(/--backend/);
      await expect(labUp({ name: "e2bad", binary: join(tmp, "missing") })).rejects.toThrow(/agent binary not found/);
      expect(await ours("e2bad")).toEqual([]);
      expect(readLabState({ name: "e2bad" })).toBeNull();
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "the lab command line: unknown flags and bad values exit 2 naming them, before anything is created",
    async () => {
      const bin = await ensureBinary();
      for (const [args, said] of [
        [["lab", "status", "--name", "e2bad", "--bogus"], "unknown flag --bogus"],
        [["lab", "up", "--name", "e2bad", "--hosts", "abc"], 'invalid value "abc" for flag --hosts'],
        [["lab", "up", "--name", "e2bad", "--backend", "udp"], "expected one of vxlan, host-gw"],
        [["lab", "down", "--name", "e2bad", "extra"], 'unexpected argument "extra"'],
      ] as const) {
        const r = Bun.spawnSync([bin, ...args], { stdout: "pipe", stderr: "pipe" });
        expect(r.exitCode).toBe(2);
        expect(r.stdout.toString() + r.stderr.toString()).toContain(said);
      }
      expect(await ours("e2bad")).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );
});
