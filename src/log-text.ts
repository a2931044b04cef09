// Untrusted text (a store value, a file's content, a parse error quoting either) shown in a log line or an error
// message. Every control character, line break and NUL becomes a visible escape and the length is capped, so a value
// can never start a new log line, hide in the terminal or flood the log.

/** Characters shown at most; the rest is replaced by a count. */
export const LOG_TEXT_MAX = 200;

// C0 and C1 controls, DEL, the Unicode line/paragraph separators, bidi overrides and isolates, and lone surrogates.
const UNSAFE =
  /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

const NAMED: Record<string, string> = { "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0" };

/** `s` with unsafe characters escaped (\n, \r, \t, \0, \xNN, \uNNNN) and backslashes doubled, at most `max` characters. */
export function escapeLogText(s: string, max = LOG_TEXT_MAX): string {
  return escapeText(s, max, true);
}

function escapeText(s: string, max: number, doubleBackslash: boolean): string {
  const head = s.length > max ? s.slice(0, max) : s;
  const body = (doubleBackslash ? head.replace(/\\/g, "\\\\") : head).replace(
    UNSAFE,
    (c) => NAMED[c] ?? (c.charCodeAt(0) < 0x100 ? `\\x${hex(c, 2)}` : `\\u${hex(c, 4)}`),
  );
  return s.length > max ? `${body}…(${s.length - max} more characters)` : body;
}

/** A value for a log line: strings quoted and escaped; anything else as (escaped, capped) JSON. */
export function logText(v: unknown, max = LOG_TEXT_MAX): string {
  if (typeof v === "string") return `"${escapeLogText(v, max).replace(/"/g, '\\"')}"`;
  let s: string | undefined;
  try {
    s = JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? x.toString() : x));
  } catch {
    s = undefined;
  }
  // JSON already escapes C0 controls and backslashes; what it leaves (C1, U+2028, bidi) is escaped here
  return s === undefined ? escapeText(String(v), max, true) : escapeText(s, max, false);
}

const hex = (c: string, n: number): string => c.charCodeAt(0).toString(16).padStart(n, "0");
