// Which command lines are the long-running agent (re-executed once with its runtime settings) and which are not.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { classify, missingRuntimeEnv, runsAgent } from "../../src/runtime-env.ts";

describe("runsAgent", () => {
  test("the agent: run, flags without a command, and flanneld with any flags", () => {
    expect(runsAgent("flannel-bin", ["run"])).toBe(true);
    expect(runsAgent("flannel-bin", ["run", "--store", "nats"])).toBe(true);
    expect(runsAgent("flannel-bin", ["--etcd-endpoints=http://10.0.0.5:2379"])).toBe(true);
    expect(runsAgent("flanneld", [])).toBe(true);
    expect(runsAgent("flanneld", ["-v", "2"])).toBe(true);
    expect(runsAgent("flanneld", ["-v"])).toBe(true); // flanneld's -v is its log level, not --version
  });

  test("short-lived commands are not", () => {
    expect(runsAgent("flannel-bin", [])).toBe(false);
    expect(runsAgent("flannel-bin", ["--version"])).toBe(false);
    expect(runsAgent("flannel-bin", ["-v"])).toBe(false);
    expect(runsAgent("flanneld", ["--version"])).toBe(false);
    expect(runsAgent("flannel-bin", ["run", "--help"])).toBe(false);
    expect(runsAgent("flanneld", ["-h"])).toBe(false);
    expect(runsAgent("flannel-bin", ["leases"])).toBe(false);
    expect(runsAgent("flannel-bin", ["config", "put", "{}"])).toBe(false);
    expect(runsAgent("flannel-bin", ["lab", "up"])).toBe(false);
    expect(runsAgent("flannel-bin", ["mk-docker-opts", "-d", "/tmp/x"])).toBe(false);
    expect(runsAgent("mk-docker-opts.sh", ["-d", "/tmp/x"])).toBe(false);
  });
});

describe("classify: the one reading of a command line (main.ts acts on it, the re-exec asks runsAgent)", () => {
  test("each kind, under each name", () => {
    expect(classify("/usr/local/bin/mk-docker-opts.sh", ["-d", "/x"])).toEqual({
      kind: "mk-docker-opts",
      args: ["-d", "/x"],
      name: "/usr/local/bin/mk-docker-opts.sh",
    });
    expect(classify("flannel-bin", ["mk-docker-opts", "-k", "X"])).toEqual({
      kind: "mk-docker-opts",
      args: ["-k", "X"],
      name: "flannel-bin mk-docker-opts",
    });
    expect(classify("flannel-bin", ["-v"])).toEqual({ kind: "version" });
    expect(classify("/usr/bin/flanneld", ["-version"])).toEqual({ kind: "version" });
    expect(classify("/usr/bin/flanneld", ["-v", "2"])).toEqual({ kind: "command", args: ["run", "-v", "2"], flanneld: true });
    expect(classify("flannel-bin", ["--iface", "eth0"])).toEqual({ kind: "command", args: ["run", "--iface", "eth0"], flanneld: false });
    expect(classify("flannel-bin", ["leases"])).toEqual({ kind: "command", args: ["leases"], flanneld: false });
    expect(classify("flannel-bin", [])).toEqual({ kind: "help", args: [], flanneld: false });
    expect(classify("flannel-bin", ["--help"])).toEqual({ kind: "help", args: ["--help"], flanneld: false });
    expect(classify("flanneld", ["-h"])).toEqual({ kind: "help", args: ["run", "-h"], flanneld: true });
    expect(classify("", ["run"])).toEqual({ kind: "command", args: ["run"], flanneld: false });
  });
});

describe("missingRuntimeEnv: what the re-exec adds", () => {
  test("both settings when neither is set; an operator's own value of either is kept; nothing when both are set", () => {
    expect(missingRuntimeEnv({ PATH: "/bin" })).toEqual({ BUN_GC_TIMER_DISABLE: "1", MIMALLOC_PURGE_DELAY: "0" });
    expect(missingRuntimeEnv({ BUN_GC_TIMER_DISABLE: "0" })).toEqual({ MIMALLOC_PURGE_DELAY: "0" });
    expect(missingRuntimeEnv({ MIMALLOC_PURGE_DELAY: "100" })).toEqual({ BUN_GC_TIMER_DISABLE: "1" });
    expect(missingRuntimeEnv({ BUN_GC_TIMER_DISABLE: "", MIMALLOC_PURGE_DELAY: "10" })).toEqual({});
  });
});

describe("the installer's unit", () => {
  test("sets exactly the agent's runtime settings (install.sh's Environment= line and runtime-env.ts cannot drift)", () => {
    const lines = readFileSync(new URL("../../install.sh", import.meta.url), "utf8").split("\n");
    const env = lines.filter((l) => l.startsWith("Environment="));
    expect(env).toHaveLength(1);
    const pairs = Object.fromEntries(
      env[0]!
        .slice("Environment=".length)
        .split(" ")
        .map((kv) => kv.split("=")),
    );
    expect(pairs).toEqual(missingRuntimeEnv({}));
  });
});
