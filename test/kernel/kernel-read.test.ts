// Batched kernel reads (root): several `ip -json` reads in one `ip -batch` process give what one process per read
// gives, and a batch with a failing command falls back to reading each command alone (the others still answer).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { ipJsonBatch, readLinksRoutesNexthops } from "../../src/kernel/kernel-read.ts";
import { ipJson, processesSpawned } from "../../src/kernel/queue.ts";
import { type TestNs, makeNs } from "./netns.ts";

let ns: TestNs;
beforeAll(() => {
  ns = makeNs();
  ns.ip("route", "add", "10.100.1.0/24", "via", "192.168.77.2", "proto", "159");
  ns.ip("-6", "addr", "add", "fd00::1/64", "dev", "ul0", "nodad");
  ns.ip("-6", "route", "add", "fd01::/64", "via", "fd00::2", "proto", "159");
  ns.ip("-6", "route", "add", "default", "via", "fd00::3", "proto", "159");
  ns.ip("route", "add", "10.100.7.0/24", "via", "192.168.77.2", "proto", "159", "table", "100"); // not the main table
  ns.ip("neigh", "replace", "192.168.77.9", "lladdr", "02:00:00:00:00:09", "dev", "ul0", "nud", "permanent");
});
afterAll(() => ns?.remove());

describe("batched kernel reads", () => {
  test("one process answers each command as its own process would", async () => {
    const cmds = [
      ["-d", "addr", "show"],
      ["route", "show", "table", "main"],
      ["nexthop", "show"],
    ];
    const alone = await Promise.all(cmds.map((c) => ipJson(c, ns.name)));
    const n = processesSpawned.count;
    const batched = await Promise.all(
      ipJsonBatch(
        ["-d"],
        [
          ["addr", "show"],
          ["route", "show", "table", "main"],
          ["nexthop", "show"],
        ],
        ns.name,
      ),
    );
    expect(processesSpawned.count - n).toBe(1);
    // A bridge's timers (gc_timer, hello_timer, ...) tick between the two reads: compared without them.
    const untimed = (v: unknown) => JSON.parse(JSON.stringify(v, (k, x) => (k.endsWith("_timer") ? undefined : x)));
    expect(untimed(batched[0])).toEqual(untimed(alone[0]));
    // -d adds the route type and scope; the routes themselves are the same, and IPv4 only as with -4.
    expect((batched[1] as { dst: string }[]).map((r) => r.dst)).toEqual((alone[1] as { dst: string }[]).map((r) => r.dst));
    expect(batched[2]).toEqual([]);
  });

  test("a failing command: the batch falls back to one read each, and only that one rejects", async () => {
    const [a, b] = ipJsonBatch(
      [],
      [
        ["link", "show", "ul0"],
        ["link", "show", "nope0"],
      ],
      ns.name,
    );
    const refused = expect(b!).rejects.toThrow("nope0"); // handled now: b may reject before a resolves
    expect(((await a) as { ifname: string }[])[0]!.ifname).toBe("ul0");
    await refused;
  });

  test("links, our main-table routes of both families, neighbours and nexthops in one process", async () => {
    const n = processesSpawned.count;
    const r = await readLinksRoutesNexthops(159, true, ns.name);
    expect(processesSpawned.count - n).toBe(1);
    expect(r.present.has("ul0")).toBe(true);
    expect(r.links.find((l) => l.ifname === "ul0")?.addr_info?.length).toBeGreaterThan(0); // with its addresses
    expect(r.routes.map((x) => `${x.dst} ${x.via}`).sort()).toEqual(["10.100.1.0/24 192.168.77.2", "::/0 fd00::3", "fd01::/64 fd00::2"]);
    expect(r.nexthops).toEqual([]);
    expect(r.neighsOf(["ul0", "nope0"])).toEqual(
      new Map([
        ["ul0", [{ dev: "ul0", ip: "192.168.77.9", lladdr: "02:00:00:00:00:09" }]],
        ["nope0", []],
      ]),
    );
  });

  test("arguments that are not plain words are refused (the batch is one text)", async () => {
    const [a] = ipJsonBatch([], [["link", "show", "ul0\nlink"]], ns.name);
    await expect(a!).rejects.toThrow();
  });
});
