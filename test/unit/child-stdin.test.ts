// A child that stops reading and exits while we are still writing: every promise the sink hands out is awaited.
import { afterEach, beforeEach, expect, test } from "bun:test";
import { endChild, writeChild } from "../../src/child-stdin.ts";

const unhandled: unknown[] = [];
const onUnhandled = (e: unknown) => void unhandled.push(e);
beforeEach(() => {
  unhandled.length = 0;
  process.on("unhandledRejection", onUnhandled);
});
afterEach(() => void process.off("unhandledRejection", onUnhandled));

// Reads `n` bytes and exits 2, like ip aborting a batch: writes after that fill the pipe (a promise) and break it.
const quitter = (n = 1000) =>
  Bun.spawn(["sh", "-c", `head -c ${n} >/dev/null; exit 2`], { stdin: "pipe", stdout: "ignore", stderr: "ignore" });
const CHUNK = `${"r".repeat(30_000)}\n`;

async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setTimeout(r, 5));
}

test("writing past a child that exited: a write says false, nothing rejected unhandled", async () => {
  // The child stops at a different point each round: the pipe breaks with and without a write pending.
  for (let round = 0; round < 30; round++) {
    const p = quitter(1000 + round * 20_000);
    const got: boolean[] = [];
    for (let i = 0; i < 40; i++) got.push(await writeChild(p.stdin, CHUNK));
    await endChild(p.stdin);
    expect(await p.exited).toBe(2);
    expect(got[0]).toBe(true);
    expect(got.indexOf(false)).toBeGreaterThan(0);
  }
  await settle();
  expect(unhandled).toEqual([]);
});

test("without flushing (one write, then end): a broken pipe leaves nothing unhandled", async () => {
  for (let round = 0; round < 5; round++) {
    const p = quitter();
    await writeChild(p.stdin, CHUNK.repeat(10), false);
    await endChild(p.stdin);
    expect(await p.exited).toBe(2);
  }
  await settle();
  expect(unhandled).toEqual([]);
});

test("writing to and ending the input of a child that has exited, twice, never throws", async () => {
  const p = Bun.spawn(["true"], { stdin: "pipe", stdout: "ignore", stderr: "ignore" });
  await p.exited;
  await writeChild(p.stdin, CHUNK); // Bun has closed that pipe: the text is dropped
  await writeChild(p.stdin, CHUNK);
  await endChild(p.stdin);
  await endChild(p.stdin);
  await settle();
  expect(unhandled).toEqual([]);
});
