import { expect, test } from "bun:test";
import { RUN_FLAGS, STORE_FLAGS } from "../../src/flags.ts";
import { placeholder, renderHelp, wrap } from "../../src/help.ts";

const run = renderHelp({ path: "flannel-bin run", description: "run the agent", specs: RUN_FLAGS }, 80);

test("run help: grouped, left-aligned, at most 80 columns, no escape bytes", () => {
  for (const l of run.split("\n")) expect(l.length).toBeLessThanOrEqual(80);
  expect(run).not.toContain("\x1b");
  const titles = run.split("\n").filter((l) => /^[A-Za-z].*:$/.test(l));
  expect(titles).toEqual([
    "Usage:",
    "Store flags:",
    "Run flags:",
    "Logging flags:",
    "flanneld flags not supported yet (accepted by name; using one is an error):",
  ]);
  // Flags start in column 3, descriptions in one column for the whole screen.
  expect(run).toContain("\n  --etcd-endpoints URL,...      comma-separated etcd endpoints");
  expect(run).toContain("\n  --iface-can-reach IP          use the interface");
  expect(run).toContain("\n  --logtostderr=false           log to standard error");
  expect(run).toMatch(/\n {2}--public-ipv6 IP +IPv6 accessible by other nodes\n/);
});

test("a flag in two groups shows once, in the first", () => {
  expect(run.match(/--etcd-prefix /g)).toHaveLength(1);
  expect(run.indexOf("--etcd-prefix")).toBeLessThan(run.indexOf("Run flags:"));
});

test("wider terminals get longer lines; the wrap never cuts a word", () => {
  const wide = renderHelp({ path: "flannel-bin run", description: "run the agent", specs: RUN_FLAGS }, 160);
  expect(Math.max(...wide.split("\n").map((l) => l.length))).toBeGreaterThan(80);
  expect(wrap("aaa bbb ccc", 7)).toEqual(["aaa bbb", "ccc"]);
  expect(wrap("a-very-long-word x", 5)).toEqual(["a-very-long-word", "x"]);
});

test("placeholders say what goes there", () => {
  expect(placeholder("store", STORE_FLAGS.store)).toBe("sqlite|etcd|nats");
  expect(placeholder("etcd-cafile", STORE_FLAGS["etcd-cafile"])).toBe("FILE");
  expect(placeholder("healthz-port", RUN_FLAGS["healthz-port"])).toBe("PORT");
  expect(placeholder("subnet-lease-ttl", RUN_FLAGS["subnet-lease-ttl"])).toBe("DURATION");
});
