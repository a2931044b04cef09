// The store wrapper the agent uses (countingFailures): counts failures and passes every argument through, read
// options included (a dropped { expiry: false } cost etcd one TimeToLive request per lease in every agent).
import { expect, test } from "bun:test";
import { type ReadOptions, type Store, StoreUnavailableError } from "../../src/store.ts";
import { StoreHealth } from "../../src/store-health.ts";
import { countingFailures } from "../../src/store-open.ts";

test("countingFailures passes read options through to list and watch, and counts a failed call", async () => {
  const seen: (ReadOptions | undefined)[] = [];
  let fail = false;
  const inner = {
    kind: "fake",
    location: "here",
    list: async (_p: string, o?: ReadOptions) => {
      seen.push(o);
      if (fail) throw new StoreUnavailableError("down");
      return { items: [], revision: 1 };
    },
    watch: (_p: string, _a: number, _s: AbortSignal, o?: ReadOptions) => {
      seen.push(o);
      return (async function* () {})();
    },
  } as unknown as Store;
  const health = new StoreHealth();
  const s = countingFailures(inner, health);
  await s.list("subnets/", { expiry: false });
  for await (const _ of s.watch("subnets/", 0, new AbortController().signal, { expiry: false })) {
  }
  expect(seen).toEqual([{ expiry: false }, { expiry: false }]);
  fail = true;
  const before = health.errors;
  await expect(s.list("subnets/")).rejects.toThrow("down");
  expect(health.errors).toBe(before + 1);
});
