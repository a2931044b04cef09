// The peer event loop against a fake reconciler: no root, no store, no kernel.
import { expect, test } from "bun:test";
import { createBackend } from "../../../backends/index.ts";
import { PeerSet, runPeerLoop } from "../../../src/agent/peer-loop.ts";
import type { ReconcileCounts } from "../../../src/kernel/reconciler.ts";
import type { StateFragment } from "../../../src/kernel/types.ts";
import type { Lease } from "../../../src/lease.ts";
import type { PeerEvent } from "../../../src/peer-watch.ts";
import { ctx, lease } from "../backends/helpers.ts";

class FakeReconciler {
  readonly calls: string[] = [];
  readonly desired = new Map<string, StateFragment>();
  started = false;
  set(id: string, f: StateFragment): void {
    if (f.routes?.some((r) => r.via === "192.0.2.66")) throw new Error("refused by validation");
    this.desired.set(id, f);
    this.calls.push(`set ${id}`);
  }
  has(id: string): boolean {
    return this.desired.has(id);
  }
  delete(id: string): void {
    this.desired.delete(id);
    this.calls.push(`delete ${id}`);
  }
  async fullReconcile(): Promise<ReconcileCounts> {
    this.calls.push("full");
    return { added: this.desired.size, removed: 0, repaired: 0 };
  }
  start(): void {
    this.started = true;
  }
}

async function* events(list: PeerEvent[]): AsyncGenerator<PeerEvent> {
  for (const e of list) yield e;
}

const hg = (subnet: string, ip: string) => lease(subnet, { backendType: "host-gw", publicIP: ip });
const added = (key: string, l: Lease): PeerEvent => ({ type: "added", key, lease: l });

test("peers become desired state; first sync runs one full reconcile, starts the reconciler and reports once", async () => {
  const target = new FakeReconciler();
  const peers = new PeerSet();
  const own: (Lease | null)[] = [];
  const firstSyncs: ReconcileCounts[] = [];
  let changes = 0;
  const backend = createBackend(ctx("host-gw"));
  await runPeerLoop(
    events([
      added("subnets/10.5.2.0-24", hg("10.5.2.0/24", "192.0.2.7")),
      added("subnets/10.5.3.0-24", lease("10.5.3.0/24", { backendType: "vxlan", publicIP: "192.0.2.8" })), // other backend
      { type: "synced", peers: 2 },
      added("subnets/10.5.4.0-24", hg("10.5.4.0/24", "192.0.2.9")),
      { type: "own", lease: null },
      { type: "removed", key: "subnets/10.5.2.0-24", lease: hg("10.5.2.0/24", "192.0.2.7") },
      { type: "synced", peers: 1 }, // a re-list: no second report
    ]),
    {
      backend,
      target,
      onOwn: (l) => own.push(l),
      onFirstSync: (c) => firstSyncs.push(c),
      onChange: () => changes++,
    },
    peers,
  );
  expect(target.calls).toEqual([
    "set subnets/10.5.2.0-24",
    "delete subnets/10.5.3.0-24",
    "full",
    "set subnets/10.5.4.0-24",
    "delete subnets/10.5.2.0-24",
  ]);
  expect(target.started).toBe(true);
  expect(firstSyncs).toEqual([{ added: 1, removed: 0, repaired: 0 }]);
  expect([...target.desired.keys()]).toEqual(["subnets/10.5.4.0-24"]);
  expect(peers.programmed).toBe(1);
  expect([...peers.ignored]).toEqual(["subnets/10.5.3.0-24"]);
  expect(own).toEqual([null]);
  expect(changes).toBe(2); // one added, one removed after the first sync
});

test("the first sync's beforeFirstSync is awaited after the reconciler starts and before it is reported", async () => {
  const target = new FakeReconciler();
  const order: string[] = [];
  await runPeerLoop(events([added("subnets/10.5.2.0-24", hg("10.5.2.0/24", "192.0.2.7")), { type: "synced", peers: 1 }]), {
    backend: createBackend(ctx("host-gw")),
    target,
    onOwn: () => {},
    beforeFirstSync: async () => {
      order.push(`before (started ${target.started})`);
      await new Promise((r) => setTimeout(r, 5));
      order.push("before done");
    },
    onFirstSync: () => order.push("reported"),
  });
  expect(order).toEqual(["before (started true)", "before done", "reported"]);
});

test("a peer refused by the kernel layer's validation is ignored, and becomes programmed when it is fixed", async () => {
  const target = new FakeReconciler();
  const peers = new PeerSet();
  const backend = createBackend(ctx("host-gw"));
  await runPeerLoop(
    events([
      added("subnets/10.5.2.0-24", hg("10.5.2.0/24", "192.0.2.66")),
      { type: "synced", peers: 1 },
      added("subnets/10.5.2.0-24", hg("10.5.2.0/24", "192.0.2.67")),
    ]),
    { backend, target, onOwn: () => {}, onFirstSync: () => {} },
    peers,
  );
  expect(target.calls).toEqual(["delete subnets/10.5.2.0-24", "full", "set subnets/10.5.2.0-24"]);
  expect([...target.desired.keys()]).toEqual(["subnets/10.5.2.0-24"]);
  expect(peers.programmed).toBe(1);
  expect(peers.ignored.size).toBe(0);
});

test("a failing first full reconcile ends the loop with its error (the agent then stops with exit 1)", async () => {
  const target = new FakeReconciler();
  target.fullReconcile = async () => {
    throw new Error("ip: cannot read routes");
  };
  const backend = createBackend(ctx("host-gw"));
  await expect(
    runPeerLoop(events([{ type: "synced", peers: 0 }]), { backend, target, onOwn: () => {}, onFirstSync: () => {} }),
  ).rejects.toThrow("cannot read routes");
});
