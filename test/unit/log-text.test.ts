import { describe, expect, test } from "bun:test";
import { LOG_TEXT_MAX, escapeLogText, logText } from "../../src/log-text.ts";

describe("escapeLogText", () => {
  const cases: [string, string, string][] = [
    ["plain text unchanged", "10.5.0.0/16", "10.5.0.0/16"],
    ["newline", "a\nFAKE [agent] ready", "a\\nFAKE [agent] ready"],
    ["CR, tab, NUL", "a\r\tb\0c", "a\\r\\tb\\0c"],
    ["other C0 and DEL", "\x1b[31mred\x7f", "\\x1b[31mred\\x7f"],
    ["C1 control", "a\x85b", "a\\x85b"],
    ["line/paragraph separators and bidi override", "a\u2028b\u2029c\u202ed", "a\\u2028b\\u2029c\\u202ed"],
    ["byte order mark", "\ufeffx", "\\ufeffx"],
    ["lone surrogate", "a\ud800b", "a\\ud800b"],
    ["a surrogate pair stays", "😀", "😀"],
    ["backslash doubled, so an escape cannot be faked", "a\\nb", "a\\\\nb"],
  ];
  for (const [name, input, want] of cases) test(name, () => expect(escapeLogText(input)).toBe(want));

  test("length cap names how much was cut", () => {
    const out = escapeLogText("x".repeat(LOG_TEXT_MAX + 50));
    expect(out).toBe(`${"x".repeat(LOG_TEXT_MAX)}…(50 more characters)`);
  });
});

describe("logText", () => {
  test("strings are quoted, quotes inside escaped", () => expect(logText('a"b\n')).toBe('"a\\"b\\n"'));
  test("other values as JSON", () => {
    expect(logText(5)).toBe("5");
    expect(logText({ a: "x\ny\u2028" })).toBe('{"a":"x\\ny\\u2028"}');
    expect(logText(undefined)).toBe("undefined");
    expect(logText(10n)).toBe('"10"');
  });
  test("no output contains a control character", () => {
    for (let c = 0; c < 0xa0; c++) expect(logText(String.fromCharCode(c))).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
  });
});
