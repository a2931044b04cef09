import { expect, test } from "bun:test";
import { missingLocalState } from "../../../src/agent/data-plane.ts";
import { Readiness } from "../../../src/agent/readiness.ts";
import { Notifier } from "../../../src/systemd-notify.ts";

function recorder() {
  const sent: string[] = [];
  return { sent, notifier: new Notifier((m) => void sent.push(m), null) };
}

test("readiness: waits, then ready once (READY=1 once), a blocker holds it back with its reason, then STATUS only", () => {
  const { sent, notifier } = recorder();
  const r = new Readiness(notifier);
  expect(r.health).toEqual({ ready: false, waitingFor: "connecting to the store" });
  r.waiting("network config");
  r.waiting("lease");
  r.block("data plane", "device flannel.1 is missing");
  r.block("data plane", "device flannel.1 is missing"); // same reason: nothing new
  expect(r.health).toEqual({ ready: false, waitingFor: "device flannel.1 is missing" });
  r.clear("data plane");
  r.started("lease 10.5.3.0/24, 2 peers");
  expect(r.health).toEqual({ ready: true, waitingFor: "" });
  r.block("subnet.env", "writing /run/flannel/subnet.env failed");
  expect(r.ready).toBe(false);
  r.clear("subnet.env");
  r.setSummary("lease 10.5.3.0/24, 3 peers");
  expect(sent).toEqual([
    "STATUS=waiting for network config",
    "STATUS=waiting for lease",
    "STATUS=not ready: device flannel.1 is missing",
    "STATUS=waiting for lease",
    "READY=1\nSTATUS=ready: lease 10.5.3.0/24, 2 peers",
    "STATUS=not ready: writing /run/flannel/subnet.env failed",
    "STATUS=ready: lease 10.5.3.0/24, 2 peers",
    "STATUS=ready: lease 10.5.3.0/24, 3 peers",
  ]);
});

test("a blocker during start-up: no READY=1 until it clears", () => {
  const { sent, notifier } = recorder();
  const r = new Readiness(notifier);
  r.block("data plane", "device flannel.1 is missing");
  r.started("lease 10.5.3.0/24, 0 peers");
  expect(r.ready).toBe(false);
  expect(sent.some((m) => m.startsWith("READY=1"))).toBe(false);
  r.clear("data plane");
  expect(sent.at(-1)).toBe("READY=1\nSTATUS=ready: lease 10.5.3.0/24, 0 peers");
});

test("liveness checks gate alive()", () => {
  const r = new Readiness(recorder().notifier);
  expect(r.alive()).toBe(true);
  let watchOk = true;
  r.addLiveness("store watch", () => watchOk);
  expect(r.alive()).toBe(true);
  watchOk = false;
  expect(r.alive()).toBe(false);
});

test("missingLocalState reads `ip -json addr show`: device missing, down, address missing, all there", () => {
  const want = {
    devices: [
      {
        kind: "vxlan" as const,
        name: "flannel.1",
        vni: 1,
        local: "192.0.2.1",
        underlay: "eth0",
        port: 0,
        mtu: 1450,
        mac: "aa:bb:cc:dd:ee:ff",
        learning: false,
        gbp: false,
      },
    ],
    addresses: [{ dev: "flannel.1", cidr: "10.5.3.0/32" }],
  };
  expect(missingLocalState(want, [{ ifname: "eth0", flags: ["UP"] }])).toBe("device flannel.1 is missing");
  expect(missingLocalState(want, [{ ifname: "flannel.1", flags: ["BROADCAST"], addr_info: [{ local: "10.5.3.0", prefixlen: 32 }] }])).toBe(
    "device flannel.1 is down",
  );
  expect(missingLocalState(want, [{ ifname: "flannel.1", flags: ["UP"], addr_info: [] }])).toBe(
    "address 10.5.3.0/32 is missing on flannel.1",
  );
  expect(
    missingLocalState(want, [{ ifname: "flannel.1", flags: ["UP", "LOWER_UP"], addr_info: [{ local: "10.5.3.0", prefixlen: 32 }] }]),
  ).toBeNull();
  expect(missingLocalState({}, "garbage")).toBeNull();
});
