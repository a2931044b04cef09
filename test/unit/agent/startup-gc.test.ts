// The start-up collection: only after a bulk first sync, and it really frees what the start left behind.
import { expect, test } from "bun:test";
import { anonResidentBytes, collectStartupGarbage, returnedPages } from "../../../src/agent/startup-gc.ts";
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

test("RssAnon is read from /proc/self/status", () => {
  expect(anonResidentBytes("Name:\tbun\nVmRSS:\t  90000 kB\nRssAnon:\t   41234 kB\nRssFile:\t  50000 kB\n")).toBe(41234 * 1024);
  expect(anonResidentBytes("Name:\tbun\nVmRSS:\t  90000 kB\n")).toBeNull();
  expect(anonResidentBytes("RssAnon:\t  12x kB\n")).toBeNull();
  const own = anonResidentBytes();
  expect(own).toBeGreaterThan(1024 * 1024); // this test runner's own, read for real
});

/** returnedPages over scripted readings (MB), counting the steps it waited. */
async function settle(readings: (number | null)[], start: number | null = 50) {
  let steps = 0;
  const MB = 2 ** 20;
  const last = await returnedPages(
    start === null ? null : start * MB,
    () => {
      const r = readings[Math.min(steps - 1, readings.length - 1)];
      return r === null || r === undefined ? null : r * MB;
    },
    async () => {
      steps++;
    },
  );
  return { steps, last: last === null ? null : last / MB };
}

test("the wait for freed pages ends two flat steps after the fall, or at its limit", async () => {
  // The usual course: back in the first step, then flat.
  expect(await settle([40, 40, 40, 39])).toEqual({ steps: 3, last: 40 });
  // A second fall restarts the flat count.
  expect(await settle([45, 45, 38, 38, 38])).toEqual({ steps: 5, last: 38 });
  // Nothing comes back (the operator set MIMALLOC_PURGE_DELAY, say): the longest wait, 60 ms in 5 ms steps.
  expect(await settle([50])).toEqual({ steps: 12, last: 50 });
  // Small wobbles are not the return.
  expect((await settle([49.9, 50, 49.95])).steps).toBe(12);
  // Without /proc: no wait at all, or none past the first failed reading.
  expect(await settle([], null)).toEqual({ steps: 0, last: null });
  expect(await settle([null])).toEqual({ steps: 1, last: null });
});
