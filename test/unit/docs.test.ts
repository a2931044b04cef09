// Every "§N" a comment cites resolves to a section of the notes in docs/: flannel-compat.md by default, field-notes.md
// when the line names the field notes. A reference to a section that does not exist fails here.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";

const REPO = resolve(import.meta.dir, "../..");

function sections(doc: string): Set<string> {
  const text = readFileSync(join(REPO, "docs", doc), "utf8");
  return new Set([...text.matchAll(/^(?:#+ |- )§(\d+(?:\.\d+)*)\b/gm)].map((m) => m[1]!));
}

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(REPO, dir), { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...sources(p));
    else if (e.name.endsWith(".ts")) out.push(p);
  }
  return out;
}

describe("docs", () => {
  test("every § reference in the code resolves to a section in docs/", () => {
    const compat = sections("flannel-compat.md");
    const field = sections("field-notes.md");
    expect(compat.size).toBe(12);
    const broken: string[] = [];
    for (const file of ["src", "stores", "backends", "test", "scripts"].flatMap(sources)) {
      readFileSync(join(REPO, file), "utf8")
        .split("\n")
        .forEach((line, i) => {
          const doc = /field[- ]notes/.test(line) ? field : compat;
          for (const m of line.matchAll(/§(\d+(?:\.\d+)*)/g)) {
            // §5.2 resolves to §5.2 when the notes have it, else to its section §5.
            if (!doc.has(m[1]!) && !doc.has(m[1]!.split(".")[0]!)) broken.push(`${file}:${i + 1}: §${m[1]}`);
          }
        });
    }
    expect(broken).toEqual([]);
  });
});
