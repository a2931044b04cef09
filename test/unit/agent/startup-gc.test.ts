// The start-up collection: only after a bulk first sync, and it really frees what the start left behind.
import { heapStats } from "bun:jsc";
import { expect, test } from "bun:test";
import { collectStartupGarbage } from "../../../src/agent/startup-gc.ts";
import { BULK_WORK } from "../../../src/jit-policy.ts";

test("a small start is not collected", async () => {
  expect(await collectStartupGarbage(BULK_WORK - 1)).toBe(false);
});

test("after a bulk start the dead start-up objects are gone", async () => {
  let junk: { i: number; s: string }[] | null = [];
  for (let i = 0; i < 200_000; i++) junk.push({ i, s: `peer ${i}` });
  const before = heapStats().objectCount;
  junk = null;
  expect(await collectStartupGarbage(BULK_WORK)).toBe(true);
  // 200,000 objects and 200,000 strings were dead: at least most of them are collected.
  expect(before - heapStats().objectCount).toBeGreaterThan(300_000);
});
