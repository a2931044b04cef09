// install.sh as text: POSIX sh that dash, busybox sh and shellcheck (-s sh) accept, one function called on the last
// line (a truncated download runs nothing), and a unit without what breaks a Bun binary or deletes /run/flannel.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO } from "../helpers/binary.ts";

const SCRIPT = join(REPO, "install.sh");
const text = readFileSync(SCRIPT, "utf8");

function check(cmd: string[]): { code: number; out: string } {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe", timeout: 30_000 });
  return { code: r.exitCode ?? -1, out: `${r.stdout.toString()}${r.stderr.toString()}` };
}

describe("install.sh", () => {
  test("parses under dash and busybox sh, and shellcheck -s sh finds nothing", () => {
    expect(check(["dash", "-n", SCRIPT])).toEqual({ code: 0, out: "" });
    expect(check(["busybox", "sh", "-n", SCRIPT])).toEqual({ code: 0, out: "" });
    expect(check(["shellcheck", "-s", "sh", SCRIPT])).toEqual({ code: 0, out: "" });
  });

  test("is one function called on the last line, with set -eu inside", () => {
    const lines = text.trimEnd().split("\n");
    expect(lines.at(-1)).toBe('flannel_bin_install "$@"');
    // Outside the function: only comments, blank lines and the call.
    const start = lines.indexOf("flannel_bin_install() {");
    const end = lines.lastIndexOf("}");
    expect(start).toBeGreaterThan(0);
    const outside = [...lines.slice(0, start), ...lines.slice(end + 1, -1)].filter((l) => l.trim() !== "" && !l.startsWith("#"));
    expect(outside).toEqual([]);
    expect(lines[start + 1]?.trim()).toBe("set -eu");
  });

  test("a truncated download runs nothing", () => {
    const half = text.slice(0, Math.floor(text.length / 2));
    const r = Bun.spawnSync(["dash", "-s"], { stdin: new Blob([half]), stdout: "pipe", stderr: "pipe", timeout: 30_000 });
    // Either a syntax error (unclosed function) or nothing at all: never a half-run installer.
    expect(r.stdout.toString()).toBe("");
    expect(r.stderr.toString()).not.toContain("[flannel-bin install]");
  });

  test("the unit has no MemoryDenyWriteExecute (Bun's JIT) and no RuntimeDirectory (it would delete /run/flannel)", () => {
    expect(text).not.toMatch(/^MemoryDenyWriteExecute/m);
    expect(text).not.toMatch(/^RuntimeDirectory/m);
  });
});
