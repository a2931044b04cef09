// TrafficRules' bookkeeping with a scripted command runner (no root): what /readyz says while rules cannot be
// installed, failures counted and logged once, recovery. The real commands are exercised in test/rules/.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ConsolaInstance } from "consola";
import type { Exec, ExecResult } from "../../../src/rules/exec.ts";
import { describeMissing, previousNetworks } from "../../../src/rules/step.ts";
import { TrafficRules } from "../../../src/rules/traffic-rules.ts";
import type { WatcherOptions } from "../../../src/rules/watcher.ts";

function capture(): { log: ConsolaInstance; lines: string[] } {
  const lines: string[] = [];
  const put =
    (lvl: string) =>
    (...a: unknown[]) =>
      void lines.push(`${lvl} ${a.map(String).join(" ")}`);
  return {
    log: { info: put("info"), warn: put("warn"), error: put("error"), debug: put("debug") } as unknown as ConsolaInstance,
    lines,
  };
}

/** A host whose iptables-nft is empty and whose iptables-restore fails until `healthy` is set. */
function scripted() {
  const state = { healthy: false, restores: [] as string[], filter: "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n" };
  const ok = (stdout = ""): ExecResult => ({ code: 0, stdout, stderr: "" });
  const exec: Exec = async (argv, stdin) => {
    const cmd = argv[0]!;
    if (argv.includes("--version")) return ok("iptables v1.8.9 (nf_tables)\n");
    if (cmd.endsWith("-save")) return ok(argv.includes("filter") ? state.filter : "");
    if (cmd.endsWith("-restore")) {
      state.restores.push(stdin ?? "");
      if (!state.healthy) return { code: 4, stdout: "", stderr: "iptables-restore: unable to initialize table 'filter'" };
      state.filter = `*filter\n:FORWARD ACCEPT [0:0]\n:FLANNEL-FWD - [0:0]\n${(stdin ?? "")
        .split("\n")
        .filter((l) => l.startsWith("-A"))
        .join("\n")}\nCOMMIT\n`;
      return ok();
    }
    if (cmd === "nft") return ok("");
    return { code: 1, stdout: "", stderr: `unexpected ${argv.join(" ")}` };
  };
  return { exec, state };
}

/** Forward rules only, as TrafficRules options. */
const forwardOnly = {
  network: "10.5.0.0/16",
  subnet: "10.5.52.0/24",
  masq: false,
  forward: true,
  fullyRandomDisable: false,
  nftables: false,
  blackhole: false,
  previous: null,
};

describe("TrafficRules", () => {
  test("a failing install names what is missing, counts failures, logs the error once, and recovers", async () => {
    const { exec, state } = scripted();
    const { log, lines } = capture();
    const tr = new TrafficRules({ ...forwardOnly, resyncMs: 10, log, exec });
    expect(tr.missing()).toEqual(["traffic rules not checked yet"]);
    expect(await tr.install()).toBe(false);
    expect(tr.missing()[0]).toBe("filter FLANNEL-FWD chain missing");
    expect(tr.missing().at(-1)).toContain("unable to initialize table 'filter'");
    expect(tr.missing().at(-1)).not.toContain("-A FLANNEL-FWD"); // the payload goes to the log, not /readyz
    expect(state.restores).toHaveLength(1); // one process for the whole table
    expect(state.restores[0]).toContain(":FLANNEL-FWD - [0:0]");
    const ac = new AbortController();
    const loop = tr.run(ac.signal);
    for (let i = 0; i < 100 && tr.stats.failures < 3; i++) await Bun.sleep(10);
    expect(tr.stats.failures).toBeGreaterThanOrEqual(3);
    expect(lines.filter((l) => l.startsWith("error")).length).toBe(1);
    state.healthy = true;
    for (let i = 0; i < 100 && tr.missing().length > 0; i++) await Bun.sleep(10);
    ac.abort();
    await loop;
    expect(tr.missing()).toEqual([]);
    expect(tr.stats.repaired).toBe(0); // the first install is not a repair
    expect(lines.some((l) => l.includes("in place again"))).toBe(true);
  });
});

describe("TrafficRules with a change watcher (scripted)", () => {
  test("idle: no process; a line about our rules: one check and fix at once; other lines: nothing", async () => {
    const { exec, state } = scripted();
    state.healthy = true;
    const calls: string[] = [];
    const counted: typeof exec = (argv, stdin) => {
      calls.push(argv.join(" "));
      return exec(argv, stdin);
    };
    const watchers: (WatcherOptions & { alive: boolean })[] = [];
    const { log, lines } = capture();
    const tr = new TrafficRules({
      ...forwardOnly,
      resyncMs: 60_000,
      safetyNetMs: 60_000,
      log,
      exec: counted,
      watcher: (o) => {
        const w = { ...o, alive: false, start: () => setTimeout(() => ((w.alive = true), o.onState(true)), 5), stop: () => {} };
        watchers.push(w);
        return w;
      },
    });
    expect(await tr.install()).toBe(true);
    const ac = new AbortController();
    const loop = tr.run(ac.signal);
    const until = async (cond: () => boolean) => {
      for (let i = 0; i < 200 && !cond(); i++) await Bun.sleep(10);
      return cond();
    };
    const saves = () => calls.filter((c) => c.includes("-save -t filter")).length;
    const before = saves();
    // The watcher subscribed: one check (what changed before that was not seen), then nothing.
    expect(await until(() => saves() === before + 1)).toBe(true);
    expect(watchers.map((w) => w.name)).toEqual(["nft monitor rules"]);
    expect(lines.some((l) => l.includes("watching for changes (`nft monitor rules`)"))).toBe(true);
    await Bun.sleep(300);
    const idle = calls.length;
    expect(tr.stats.processesSpawned).toBe(calls.length);
    // Someone else's rule: no check.
    watchers[0]!.onLine({ text: 'add rule ip filter FORWARD iifname "docker0" counter packets 0 bytes 0 accept', truncated: false });
    await Bun.sleep(300);
    expect(calls.length).toBe(idle);
    // Our rule deleted: checked and put back well within a second.
    state.filter = "*filter\n:FORWARD ACCEPT [0:0]\n:FLANNEL-FWD - [0:0]\nCOMMIT\n";
    const restores = state.restores.length;
    watchers[0]!.onLine({ text: "delete rule ip filter FLANNEL-FWD handle 5", truncated: false });
    expect(await until(() => state.restores.length === restores + 1)).toBe(true);
    expect(tr.stats.repaired).toBe(3); // two rules and the jump
    expect(lines.filter((l) => l.startsWith("warn traffic rules repaired"))).toHaveLength(1);
    ac.abort();
    await loop;
  });
});

describe("step helpers", () => {
  test("describeMissing keeps /readyz short", () => {
    expect(describeMissing(["a", "b"])).toBe("a; b");
    expect(describeMissing(["a", "b", "c", "d", "e"])).toBe("a; b; c; and 2 more");
  });
  test("previousNetworks reads the old subnet.env (subnet masked), tolerates junk and absence", () => {
    const dir = mkdtempSync(join(tmpdir(), "rules-"));
    try {
      const f = join(dir, "subnet.env");
      expect(previousNetworks(f)).toBeNull();
      writeFileSync(f, "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n");
      expect(previousNetworks(f)).toEqual({ network: "10.5.0.0/16", subnet: "10.5.52.0/24" });
      writeFileSync(f, "FLANNEL_NETWORK=nonsense; rm -rf /\nFLANNEL_SUBNET=10.5.52.1/24,10.5.53.1/24\n");
      expect(previousNetworks(f)).toEqual({ network: null, subnet: null });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
