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

/** A host whose iptables-nft starts empty and whose iptables-restore fails until `healthy` is set. */
function scripted() {
  const state = { healthy: false, restores: [] as string[], filter: "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n" };
  const ok = (stdout = ""): ExecResult => ({ code: 0, stdout, stderr: "" });
  const exec: Exec = async (argv, stdin) => {
    const cmd = argv[0]!;
    if (argv.includes("--version")) return ok("iptables v1.8.9 (nf_tables)\n");
    // Our rules are in iptables-nft (the flavour detection reads whole dumps); iptables-legacy is empty.
    if (cmd.endsWith("-save")) return ok(cmd === "iptables-legacy-save" ? "" : state.filter);
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
    // The install's fix started the watcher; its read-back, made once it had subscribed, left nothing to check.
    expect(watchers.map((w) => w.name)).toEqual(["nft monitor rules"]);
    expect(lines.some((l) => l.includes("watching for changes (`nft monitor rules`)"))).toBe(true);
    const afterInstall = calls.length;
    await Bun.sleep(300);
    expect(calls.length).toBe(afterInstall);
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
    expect(await until(() => tr.stats.repaired === 3)).toBe(true);
    expect(tr.stats.repaired).toBe(3); // two rules and the jump
    expect(lines.filter((l) => l.startsWith("warn traffic rules repaired"))).toHaveLength(1);
    ac.abort();
    await loop;
  });
});

/** A scripted watcher: listed in `calls` when started, subscribed after `subscribeMs` (then `beforeSubscribing`). */
function scriptedWatcher(calls: string[], subscribeMs: number, beforeSubscribing: () => void = () => {}) {
  const watchers: (WatcherOptions & { alive: boolean })[] = [];
  const make = (o: WatcherOptions) => {
    const w = {
      ...o,
      alive: false,
      start: () => {
        calls.push(`watch: ${o.name}`);
        o.onSpawn();
        setTimeout(() => {
          beforeSubscribing();
          w.alive = true;
          o.onState(true);
        }, subscribeMs);
      },
      stop: () => {},
    };
    watchers.push(w);
    return w;
  };
  return { watchers, make };
}

/** Runs the step until no process has started for `quietMs`, then stops it. */
async function runUntilQuiet(tr: TrafficRules, calls: string[], quietMs = 300): Promise<void> {
  const ac = new AbortController();
  const loop = tr.run(ac.signal);
  let last = -1;
  let since = Date.now();
  for (let i = 0; i < 500 && Date.now() - since < quietMs; i++) {
    if (calls.length !== last) [last, since] = [calls.length, Date.now()];
    await Bun.sleep(10);
  }
  ac.abort();
  await loop;
}

describe("TrafficRules start-up: the watcher before the read-back", () => {
  type Host = ReturnType<typeof scripted>;
  const setup = (subscribeMs: number, beforeSubscribing?: (state: Host["state"]) => void, host: Host = scripted()) => {
    const { exec, state } = host;
    state.healthy = true;
    const calls: string[] = [];
    const counted: Exec = (argv, stdin) => {
      calls.push(argv.join(" "));
      return exec(argv, stdin);
    };
    const w = scriptedWatcher(calls, subscribeMs, () => beforeSubscribing?.(state));
    const { log, lines } = capture();
    const tr = new TrafficRules({ ...forwardOnly, resyncMs: 60_000, safetyNetMs: 60_000, log, exec: counted, watcher: w.make });
    return { tr, calls, state, lines };
  };
  const emptyFilter = "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n";

  test("a fresh host: write, start the watcher, one read once it has subscribed, then no process (one fewer than a read before the watcher and one after)", async () => {
    const { tr, calls } = setup(5);
    expect(await tr.install()).toBe(true);
    await runUntilQuiet(tr, calls);
    // What comes before the write (the flavour detection, leftovers of the other engine) depends on what is installed.
    const write = calls.findIndex((c) => c.includes("-restore"));
    expect(write).toBeGreaterThanOrEqual(0);
    expect(calls.slice(write).map((c) => c.replace(/^iptables(-nft)?/, "iptables"))).toEqual([
      "iptables-restore --noflush --wait",
      "watch: nft monitor rules",
      "iptables-save -t filter",
    ]);
    expect(tr.stats.processesSpawned).toBe(calls.length);
    expect(tr.stats.checks).toBe(0);
    expect(tr.missing()).toEqual([]);
  });

  test("rules already in place: the watcher starts after the install, and one read follows its subscription", async () => {
    const host = scripted();
    const before = setup(5, undefined, host);
    expect(await before.tr.install()).toBe(true);
    before.tr.stop();
    const { tr, calls } = setup(5, undefined, host);
    expect(await tr.install()).toBe(true);
    expect(calls.some((c) => c.includes("-restore") || c.startsWith("watch:"))).toBe(false);
    await runUntilQuiet(tr, calls);
    const watch = calls.indexOf("watch: nft monitor rules");
    expect(calls.slice(watch).map((c) => c.replace(/^iptables(-nft)?/, "iptables"))).toEqual([
      "watch: nft monitor rules",
      "iptables-save -t filter",
    ]);
    expect(tr.stats.processesSpawned).toBe(calls.length);
  });

  test("a rule deleted after the write, before the watcher subscribed: the read-back sees it and it is repaired", async () => {
    const { tr, calls, state, lines } = setup(5, (st) => {
      st.filter = emptyFilter; // someone's `iptables -F` right then: no watcher saw it
    });
    expect(await tr.install()).toBe(false); // the read-back found it missing: not ready yet
    expect(tr.missing()[0]).toBe("filter FLANNEL-FWD chain missing");
    await runUntilQuiet(tr, calls);
    expect(state.restores).toHaveLength(2);
    expect(state.filter).toContain("-A FLANNEL-FWD");
    expect(tr.missing()).toEqual([]);
    expect(tr.stats.repaired).toBeGreaterThan(0);
    expect(lines.filter((l) => l.startsWith("warn traffic rules repaired"))).toHaveLength(1);
  });

  test("a watcher slower to subscribe than the install waits: read back anyway, and read again once it has subscribed", async () => {
    // Deleted after the read-back, before the subscription: only the read after the subscription can see it.
    const { tr, calls, state } = setup(1500, (st) => {
      st.filter = emptyFilter;
    });
    const t0 = Date.now();
    expect(await tr.install()).toBe(true);
    expect(Date.now() - t0).toBeLessThan(1400);
    await runUntilQuiet(tr, calls, 1000);
    expect(state.restores).toHaveLength(2);
    expect(tr.missing()).toEqual([]);
    expect(tr.stats.repaired).toBeGreaterThan(0);
    expect(tr.stats.processesSpawned).toBe(calls.length);
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
