// Real iproute2 in a throw-away namespace.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { fdbReplace, linkAddVxlan, linkSetUp, neighDel, neighReplace, routeReplace } from "../../src/kernel/commands.ts";
import { CommandQueue, bridgeJson, ipJson, processesSpawned } from "../../src/kernel/queue.ts";
import { makeNs, type TestNs } from "./netns.ts";
import { consola } from "../../src/log.ts";
import { vxlanDevice } from "../helpers/kernel-fixtures.ts";

let ns: TestNs;
beforeAll(() => {
  ns = makeNs();
});
afterAll(() => ns?.remove());

const route = (i: number, via = "192.168.77.2") => ({
  dst: `10.${100 + (i >> 8)}.${i & 255}.0/24`,
  via,
  dev: "ul0",
  onlink: false,
});

async function protoRoutes(): Promise<{ dst: string }[]> {
  return (await ipJson(["route", "show", "proto", "159"], ns.name)) as { dst: string }[];
}

describe("CommandQueue", () => {
  test("1000 routes go through one ip process", async () => {
    const q = new CommandQueue({ netns: ns.name });
    try {
      const res = await q.runAll(Array.from({ length: 1000 }, (_, i) => routeReplace(route(i), 159)));
      expect(res.every((r) => r.ok && r.tries === 1)).toBe(true);
      expect(q.stats()).toEqual({ sent: 1000, failed: 0, retried: 0, batches: 1 });
      expect((await protoRoutes()).length).toBe(1000);
    } finally {
      q.close();
      ns.ip("route", "flush", "proto", "159");
    }
  });

  test("maxBatch splits a long run into processes, in order, none lost", async () => {
    const q = new CommandQueue({ netns: ns.name, maxBatch: 100 });
    try {
      const res = await q.runAll(Array.from({ length: 250 }, (_, i) => routeReplace(route(i), 159)));
      expect(res.length).toBe(250);
      expect(res.every((r) => r.ok)).toBe(true);
      expect(q.stats()).toEqual({ sent: 250, failed: 0, retried: 0, batches: 3 });
      expect((await protoRoutes()).length).toBe(250);
    } finally {
      q.close();
      ns.ip("route", "flush", "proto", "159");
    }
  });

  test("a bad line in the middle fails alone and is retried; the others succeed", async () => {
    const q = new CommandQueue({ netns: ns.name, maxRetries: 3, retryBaseMs: 10 });
    try {
      const cmds = Array.from({ length: 101 }, (_, i) => routeReplace(route(i, i === 50 ? "1.2.3.4" : "192.168.77.2"), 159));
      const res = await q.runAll(cmds);
      expect(res.filter((r) => !r.ok).map((r) => r.cmd)).toEqual([cmds[50]!]);
      expect(res[50]!.error).toContain("invalid gateway");
      expect(res[50]!.tries).toBe(3);
      expect(res[49]!.tries).toBe(1);
      expect(q.stats()).toEqual({ sent: 103, failed: 1, retried: 2, batches: 3 });
      expect((await protoRoutes()).length).toBe(100);
    } finally {
      q.close();
      ns.ip("route", "flush", "proto", "159");
    }
  });

  test("run() calls within the window share a process; ip/bridge order is kept", async () => {
    const q = new CommandQueue({ netns: ns.name, windowMs: 20 });
    const dev = vxlanDevice({ name: "vx9", vni: 9, mac: "02:00:00:00:09:01" });
    try {
      const rs = await Promise.all([
        q.run(linkAddVxlan(dev)),
        q.run(linkSetUp("vx9")),
        q.run(neighReplace({ dev: "vx9", ip: "10.9.1.0", lladdr: "02:00:00:00:09:02" })),
        q.run(fdbReplace({ dev: "vx9", mac: "02:00:00:00:09:02", dst: "192.168.77.9" })),
        q.run(routeReplace({ dst: "10.9.1.0/24", via: "10.9.1.0", dev: "vx9", onlink: true }, 159)),
      ]);
      expect(rs.map((r) => r.ok)).toEqual([true, true, true, true, true]);
      expect(q.stats().batches).toBe(3); // ip (link, link, neigh) | bridge (fdb) | ip (route)
      const fdb = (await bridgeJson(["fdb", "show", "dev", "vx9"], ns.name)) as { mac: string; dst?: string }[];
      expect(fdb.some((f) => f.mac === "02:00:00:00:09:02" && f.dst === "192.168.77.9")).toBe(true);
      expect((await protoRoutes()).map((r) => r.dst)).toEqual(["10.9.1.0/24"]);
    } finally {
      q.close();
      ns.ip("link", "del", "vx9");
    }
  });

  test("ip neigh aborting the batch (exit 2) is recovered: later lines still run, absent deletes count as done", async () => {
    ns.ip("link", "add", "vx8", "type", "vxlan", "id", "8", "local", "192.168.77.1", "dev", "ul0", "dstport", "0");
    const q = new CommandQueue({ netns: ns.name, maxRetries: 2, retryBaseMs: 10 });
    try {
      const n = (i: number) => ({ dev: "vx8", ip: `10.8.0.${i}`, lladdr: `02:00:00:00:08:0${i}` });
      const res = await q.runAll([
        neighReplace(n(1)),
        neighDel(n(2)), // absent: ip exits 2 here without a "Command failed" line
        neighReplace(n(3)),
        neighDel(n(4)),
        neighReplace(n(5)),
      ]);
      expect(res.map((r) => r.ok)).toEqual([true, true, true, true, true]);
      const got = ((await ipJson(["neigh", "show", "dev", "vx8"], ns.name)) as { dst: string }[]).map((x) => x.dst).sort();
      expect(got).toEqual(["10.8.0.1", "10.8.0.3", "10.8.0.5"]);
      expect(q.stats().failed).toBe(0);
      expect(q.stats().batches).toBeGreaterThan(1); // the normal run aborted, probe runs finished it
    } finally {
      q.close();
      ns.ip("link", "del", "vx8");
    }
  });

  test("runAll pulls its source lazily: the first lines are in the kernel before the last one is made", async () => {
    const q = new CommandQueue({ netns: ns.name });
    let seenEarly = false;
    function* cmds() {
      for (let i = 0; i < 3000; i++) {
        if (i === 2000) {
          // Bounded wait (up to 2 s) for route 0, sent in the first chunk, while this generator is still planning.
          for (let k = 0; k < 200 && !seenEarly; k++) {
            seenEarly = ns.ip("route", "show", "10.100.0.0/24", "proto", "159").includes("10.100.0.0");
            if (!seenEarly) Bun.sleepSync(10);
          }
        }
        yield routeReplace(route(i), 159);
      }
    }
    try {
      const res = await q.runAll(cmds());
      expect(seenEarly).toBe(true);
      expect(res.length).toBe(3000);
      expect(res.every((r) => r.ok)).toBe(true);
      expect(q.stats()).toEqual({ sent: 3000, failed: 0, retried: 0, batches: 1 });
      expect((await protoRoutes()).length).toBe(3000);
    } finally {
      q.close();
      ns.ip("route", "flush", "proto", "159");
    }
  });

  test("an abort in the middle of a long stream: lines after it still run, each with its own result", async () => {
    ns.ip("link", "add", "vx7", "type", "vxlan", "id", "7", "local", "192.168.77.1", "dev", "ul0", "dstport", "0");
    const q = new CommandQueue({ netns: ns.name, maxRetries: 1 });
    try {
      const n = (i: number) => ({ dev: "vx7", ip: `10.7.${i >> 8}.${i & 255}`, lladdr: "02:00:00:00:07:01" });
      // The absent delete makes ip exit 2 after ~3,000 lines while the rest is still being written (broken pipe).
      const cmds = [...Array.from({ length: 3000 }, (_, i) => neighReplace(n(i))), neighDel(n(5000))];
      cmds.push(...Array.from({ length: 3000 }, (_, i) => neighReplace(n(3000 + i))));
      cmds.push(routeReplace(route(7, "1.2.3.4"), 159)); // unreachable gateway: fails
      const res = await q.runAll(cmds);
      expect(res.length).toBe(cmds.length);
      expect(res.slice(0, -1).every((r) => r.ok)).toBe(true);
      expect(res.at(-1)!.ok).toBe(false);
      const got = (await ipJson(["neigh", "show", "dev", "vx7"], ns.name)) as unknown[];
      expect(got.length).toBe(6000);
      expect(q.stats().failed).toBe(1);
    } finally {
      q.close();
      ns.ip("link", "del", "vx7");
    }
  });

  test("a source that throws rejects runAll; what it made before still runs", async () => {
    const q = new CommandQueue({ netns: ns.name });
    function* cmds() {
      yield routeReplace(route(1), 159);
      yield routeReplace(route(2), 159);
      throw new Error("planning broke");
    }
    try {
      await expect(q.runAll(cmds())).rejects.toThrow("planning broke");
      // The two routes were taken before the throw: they are sent and the queue keeps working.
      const after = await q.runAll([routeReplace(route(3), 159)]);
      expect(after[0]!.ok).toBe(true);
      expect((await protoRoutes()).map((r) => r.dst).sort()).toEqual(["10.100.1.0/24", "10.100.2.0/24", "10.100.3.0/24"]);
    } finally {
      q.close();
      ns.ip("route", "flush", "proto", "159");
    }
  });

  test("close() while a source streams: it is not pulled further, its remaining commands fail as closed", async () => {
    const q = new CommandQueue({ netns: ns.name });
    let made = 0;
    function* cmds() {
      for (let i = 0; i < 2000; i++) {
        if (i === 600) q.close();
        made++;
        yield routeReplace(route(i), 159);
      }
    }
    try {
      const res = await q.runAll(cmds());
      expect(made).toBe(2000); // drained as failed, so every command has a result
      expect(res.length).toBe(2000);
      expect(res.slice(1000).every((r) => !r.ok && r.error === "command queue closed")).toBe(true);
      const ok = res.filter((r) => r.ok).length;
      expect(ok).toBeGreaterThan(0);
      expect(ok).toBeLessThanOrEqual(601);
      expect((await protoRoutes()).length).toBe(ok);
    } finally {
      q.close();
      ns.ip("route", "flush", "proto", "159");
    }
  });

  test("ip that cannot be started: every command fails with the reason, and one warning says it for all of them", async () => {
    const logged: string[] = [];
    const reporter = { log: (o: { args: unknown[]; type: string }) => void (o.type === "warn" && logged.push(o.args.join(" "))) };
    const path = process.env.PATH;
    consola.addReporter(reporter);
    process.env.PATH = "/nonexistent-flannel-bin-test"; // the queue spawns `ip` through PATH
    const q = new CommandQueue({ netns: ns.name, maxRetries: 2, retryBaseMs: 1 });
    try {
      const res = await q.runAll(Array.from({ length: 300 }, (_, i) => routeReplace(route(i), 159)));
      expect(res.every((r) => !r.ok && r.tries === 2 && /could not run ip/.test(r.error ?? ""))).toBe(true);
      // Not one line per command: one for the reason (the retries come back in batches of their own, each counted).
      expect(logged.filter((l) => l.includes("could not run ip"))).toEqual([
        expect.stringMatching(/could not run ip: .*gave up after 2 tries/),
      ]);
    } finally {
      process.env.PATH = path;
      consola.removeReporter(reporter);
      q.close();
    }
    expect((await protoRoutes()).length).toBe(0);
  });

  test("ipJson reads and throws with ip's message", async () => {
    const links = (await ipJson(["link", "show", "ul0"], ns.name)) as { ifname: string }[];
    expect(links[0]!.ifname).toBe("ul0");
    await expect(ipJson(["link", "show", "nope0"], ns.name)).rejects.toThrow("nope0");
    await expect(ipJson(["link"], "bad ns")).rejects.toThrow("invalid network namespace");
  });

  test("closed queue resolves commands as failed", async () => {
    const q = new CommandQueue({ netns: ns.name, windowMs: 1000 });
    const p = q.run(routeReplace(route(1), 159));
    q.close();
    const r = await p;
    expect(r.ok).toBe(false);
    expect(r.error).toContain("closed");
  });
});

describe("CommandQueue's kept batch process", () => {
  // A bridge stands in for a device of ours (the dummy module is not always there); routes on it resolve.
  const dev = (name: string) => {
    ns.ip("link", "add", name, "type", "bridge");
    ns.ip("addr", "add", "192.168.78.1/24", "dev", name);
    ns.ip("link", "set", name, "up");
  };
  const onDev = (i: number, d: string) => routeReplace({ dst: `10.120.${i}.0/24`, via: "192.168.78.2", dev: d, onlink: false }, 159);

  test("runs that follow each other share one process; it ends after keepAliveMs without a run", async () => {
    const q = new CommandQueue({ netns: ns.name, keepAliveMs: 300 });
    try {
      const n0 = processesSpawned.count;
      for (let i = 0; i < 5; i++) expect((await q.runAll([routeReplace(route(i), 159)]))[0]!.ok).toBe(true);
      expect(processesSpawned.count - n0).toBe(1);
      expect(q.stats()).toEqual({ sent: 5, failed: 0, retried: 0, batches: 5 });
      await Bun.sleep(500); // past keepAliveMs: the next run starts a new process
      expect((await q.runAll([routeReplace(route(9), 159)]))[0]!.ok).toBe(true);
      expect(processesSpawned.count - n0).toBe(2);
      expect((await protoRoutes()).length).toBe(6);
    } finally {
      q.close();
      ns.ip("route", "flush", "proto", "159");
    }
  });

  test("a run with a failed line is the process's last: the next run starts a new one", async () => {
    const q = new CommandQueue({ netns: ns.name, maxRetries: 1 });
    try {
      const n0 = processesSpawned.count;
      const r = await q.runAll([routeReplace(route(1), 159), routeReplace(route(2, "1.2.3.4"), 159), routeReplace(route(3), 159)]);
      expect(r.map((x) => x.ok)).toEqual([true, false, true]);
      expect(r[1]!.error).toContain("invalid gateway");
      expect((await q.runAll([routeReplace(route(4), 159)]))[0]!.ok).toBe(true);
      expect(processesSpawned.count - n0).toBe(2);
    } finally {
      q.close();
      ns.ip("route", "flush", "proto", "159");
    }
  });

  test("a device deleted and made again: after linksChanged() the next run is not sent to a process that knew the old one", async () => {
    const q = new CommandQueue({ netns: ns.name, maxRetries: 1 });
    try {
      dev("kq0");
      expect((await q.runAll([onDev(1, "kq0")]))[0]!.ok).toBe(true);
      ns.ip("link", "del", "kq0");
      dev("kq0");
      // Why it matters: the kept process looks kq0 up in its own cache and sends the deleted device's index.
      const stale = await q.runAll([onDev(2, "kq0")]);
      expect(stale[0]!.ok).toBe(false);
      // The failure retired that process; a deletion seen by the monitor retires it before any run.
      expect((await q.runAll([onDev(3, "kq0")]))[0]!.ok).toBe(true);
      ns.ip("link", "del", "kq0");
      dev("kq0");
      q.linksChanged();
      expect((await q.runAll([onDev(4, "kq0")]))[0]!.ok).toBe(true);
    } finally {
      q.close();
      Bun.spawnSync(["ip", "-n", ns.name, "link", "del", "kq0"]);
    }
  });

  test("a run with a link line is the process's last (its device index cache may change)", async () => {
    const q = new CommandQueue({ netns: ns.name });
    try {
      const n0 = processesSpawned.count;
      expect((await q.runAll([linkSetUp("ul0"), routeReplace(route(1), 159)])).every((r) => r.ok)).toBe(true);
      expect((await q.runAll([routeReplace(route(2), 159)]))[0]!.ok).toBe(true);
      expect((await q.runAll([routeReplace(route(3), 159)]))[0]!.ok).toBe(true);
      expect(processesSpawned.count - n0).toBe(2);
    } finally {
      q.close();
      ns.ip("route", "flush", "proto", "159");
    }
  });

  test("a kept process does not keep the run's commands and results reachable", async () => {
    const q = new CommandQueue({ netns: ns.name, keepAliveMs: 60_000 });
    try {
      // Made and run in a function of its own: nothing on this frame refers to them afterwards.
      const run = async (): Promise<WeakRef<object>> => {
        const cmds = Array.from({ length: 500 }, (_, i) => routeReplace(route(i), 159));
        const res = await q.runAll(cmds);
        expect(res.every((r) => r.ok)).toBe(true);
        return new WeakRef(cmds[250]!);
      };
      const ref = await run();
      for (let i = 0; i < 3; i++) {
        await new Promise((r) => setTimeout(r, 0));
        await new Promise((r) => setImmediate(r));
      }
      Bun.gc(true);
      expect(ref.deref()).toBeUndefined();
    } finally {
      q.close();
      ns.ip("route", "flush", "proto", "159");
    }
  });

  test("keepAliveMs 0: a process per run", async () => {
    const q = new CommandQueue({ netns: ns.name, keepAliveMs: 0 });
    try {
      const n0 = processesSpawned.count;
      for (let i = 0; i < 3; i++) expect((await q.runAll([routeReplace(route(i), 159)]))[0]!.ok).toBe(true);
      expect(processesSpawned.count - n0).toBe(3);
    } finally {
      q.close();
      ns.ip("route", "flush", "proto", "159");
    }
  });
});
