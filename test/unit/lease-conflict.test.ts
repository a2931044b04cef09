// Our own key overwritten by another writer: a logged conflict naming the writer; we keep the subnet, never exit,
// and re-claim the key by create-if-absent once that record goes.
import { afterAll, expect, test } from "bun:test";
import { consola } from "../../src/log.ts";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { waitFor } from "../../src/lab/netns.ts";
import { parseNetworkConfig } from "../../src/config.ts";
import { formatCIDR } from "../../src/ipmath.ts";
import { decodeLeaseAttrs, encodeLeaseAttrs, subnetKey } from "../../src/lease.ts";
import { LeaseKeeper, acquireLease } from "../../src/lease-protocol.ts";
import { SqliteStore } from "../../stores/sqlite.ts";

const dir = mkdtempSync(join(tmpdir(), "fb-lc-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test("an overwritten own key is a conflict we wait out, then re-claim on the same subnet", async () => {
  const s = SqliteStore.open(join(dir, "c.db"));
  const ac = new AbortController();
  const logged: string[] = [];
  const reporter = { log: (o: { args: unknown[] }) => void logged.push(o.args.join(" ")) };
  consola.addReporter(reporter);
  try {
    const cfg = parseNetworkConfig('{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}');
    const ours = { publicIP: "192.0.2.1", publicIPv6: null, backendType: "host-gw" };
    const lease = await acquireLease(s, cfg, ours, { previousSubnet: null, ttlMs: 60_000 });
    const key = subnetKey(lease.subnet);
    const keeper = new LeaseKeeper(s, lease, { ttlMs: 60_000, marginMs: 30_000 });
    let ended = false;
    const running = keeper.run(ac.signal).then((r) => {
      ended = true;
      return r;
    });

    // Someone (etcdctl put, a misconfigured host) writes a different value on our key.
    const cur = (await s.get(key))!;
    await s.update(key, encodeLeaseAttrs({ ...ours, publicIP: "192.0.2.99" }), cur.revision, { ttlMs: 60_000 });
    keeper.notice(null); // what the agent's own-record watch does on any foreign change
    await waitFor("the conflict", 5000, async () => keeper.conflict ?? undefined, 20);
    expect(keeper.conflict).toBe("PublicIP 192.0.2.99");
    expect(logged.some((m) => m.includes("lease conflict") && m.includes("PublicIP 192.0.2.99") && m.includes(key))).toBe(true);
    await Bun.sleep(200);
    expect(ended).toBe(false); // no exit, no move
    expect(decodeLeaseAttrs((await s.get(key))!.value).publicIP).toBe("192.0.2.99"); // and no blind overwrite

    // The intruding record goes: we take the same key back.
    const theirs = (await s.get(key))!;
    expect(await s.delete(key, theirs.revision)).toBe(true);
    keeper.notice(null);
    await waitFor("the re-claim", 5000, async () => (keeper.conflict === null ? true : undefined), 20);
    expect(formatCIDR(keeper.lease.subnet)).toBe(formatCIDR(lease.subnet));
    expect(decodeLeaseAttrs((await s.get(key))!.value).publicIP).toBe("192.0.2.1");
    ac.abort();
    expect(await running).toBe("stopped");
  } finally {
    consola.removeReporter(reporter);
    ac.abort();
    await s.close();
  }
});
