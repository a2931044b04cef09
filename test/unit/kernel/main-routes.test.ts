// parseMainRoutes: `ip -json -d route show table all proto P` (both families in one batch line) read back as the main
// table's routes, each with its family.
import { describe, expect, test } from "bun:test";
import { parseMainRoutes } from "../../../src/kernel/kernel-read.ts";

describe("parseMainRoutes", () => {
  test("main-table routes of both families; other tables and non-routes are left out", () => {
    const out = parseMainRoutes([
      { dst: "10.5.2.0/24", gateway: "10.5.2.0", dev: "flannel.1", table: "main", flags: ["onlink"] },
      { dst: "10.5.3.0/24", nhid: 2667577345, table: "main", flags: [] },
      { dst: "fd01::/64", gateway: "fd00::2", dev: "ul0", table: "main", pref: "medium", flags: [] },
      { dst: "10.7.0.0/24", gateway: "10.9.0.2", dev: "ul0", table: "100", flags: [] },
      { dst: "10.8.0.1", dev: "ul0", table: "local", flags: [] },
      { dst: "10.9.9.0/24", dev: "ul0", flags: [] }, // no table named: the main one (as without -d)
      "not an object",
      { dst: 42 },
    ]);
    expect(out).toEqual([
      { dst: "10.5.2.0/24", via: "10.5.2.0", dev: "flannel.1", onlink: true },
      { dst: "10.5.3.0/24", nhid: 2667577345, onlink: false },
      { dst: "fd01::/64", via: "fd00::2", dev: "ul0", onlink: false },
      { dst: "10.9.9.0/24", dev: "ul0", onlink: false },
    ]);
  });

  test("a default route's family comes from its gateway, or IPv6's pref", () => {
    const out = parseMainRoutes([
      { dst: "default", gateway: "192.168.77.1", dev: "ul0", table: "main", flags: [] },
      { dst: "default", gateway: "fd00::3", dev: "ul0", table: "main", flags: [] },
      { dst: "default", dev: "ul0", table: "main", pref: "medium", flags: [] },
      { dst: "10.5.4.1", dev: "ul0", table: "main", flags: [] },
    ]);
    expect(out.map((r) => r.dst)).toEqual(["0.0.0.0/0", "::/0", "::/0", "10.5.4.1/32"]);
  });
});
