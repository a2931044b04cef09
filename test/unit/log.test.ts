import { expect, test } from "bun:test";
import { colourAllowed, plainLine } from "../../src/log.ts";

test("plain lines: a level word, the tag, one line per event", () => {
  expect(plainLine({ type: "info", tag: "agent", args: ["using the etcd store"] })).toBe("info [agent] using the etcd store");
  expect(plainLine({ type: "success", tag: "agent", args: ["ready"] })).toBe("info [agent] ready");
  expect(plainLine({ type: "warn", tag: "", args: ["a\n  b\nc"] })).toBe("warn a b c");
  expect(plainLine({ type: "error", tag: "x", args: [new Error("boom"), { a: 1 }] })).toBe("error [x] boom { a: 1 }");
  expect(plainLine({ type: "debug", tag: "x", args: ["d"] })).toBe("debug [x] d");
});

test("colour only on a terminal without NO_COLOR", () => {
  expect(colourAllowed({ isTTY: true }, {})).toBe(true);
  expect(colourAllowed({ isTTY: false }, {})).toBe(false);
  expect(colourAllowed({ isTTY: true }, { NO_COLOR: "" })).toBe(false);
  expect(colourAllowed({ isTTY: true }, { TERM: "dumb" })).toBe(false);
});
