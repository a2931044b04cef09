// The start-up collection: only after a bulk first sync, and it really frees what the start left behind.
import { expect, test } from "bun:test";
import { collectStartupGarbage } from "../../../src/agent/startup-gc.ts";
import { BULK_WORK } from "../../../src/jit-policy.ts";

test("a small start is not collected", async () => {
  expect(await collectStartupGarbage(BULK_WORK - 1)).toBe(false);
});

/** Start-up-like garbage, made in a frame of its own: only a WeakRef to it is kept. */
function garbage(): WeakRef<object[]> {
  const junk: object[] = [];
  for (let i = 0; i < 200_000; i++) junk.push({ i, s: `peer ${i}` });
  return new WeakRef(junk);
}

test("after a bulk start the dead start-up objects are gone", async () => {
  const ref = garbage();
  expect(await collectStartupGarbage(BULK_WORK)).toBe(true);
  expect(ref.deref()).toBeUndefined();
});
