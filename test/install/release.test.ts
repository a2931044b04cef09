// npm run release: every file is there, sha256sum.txt is right (and `sha256sum -c` agrees), each binary is an ELF
// executable for its machine, built on its own target's runtime, and the x64 ones run here from an empty folder.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RELEASE_TARGETS, ensureRuntime, sha256File } from "../../scripts/release.ts";
import { VERSION } from "../../scripts/compile.ts";
import { REPO } from "../helpers/binary.ts";
import { CACHE_ROOT, RELEASE_FILES, ensureRelease } from "./release-files.ts";

const dir = ensureRelease();

interface ElfInfo {
  machine: number;
  /** Bytes of the .text section, to compare with the runtime the binary was built on. */
  text: Buffer;
}

/** Reads an ELF64 little-endian header and its .text section (by the section-name string table). */
function readElf(path: string): ElfInfo {
  const b = readFileSync(path);
  if (b.subarray(0, 4).toString("latin1") !== "\x7fELF") throw new Error(`${path}: not an ELF file`);
  if (b[4] !== 2 || b[5] !== 1) throw new Error(`${path}: not a 64-bit little-endian ELF (class ${b[4]}, data ${b[5]})`);
  const type = b.readUInt16LE(16);
  if (type !== 2 && type !== 3) throw new Error(`${path}: ELF type ${type} is not an executable`);
  const machine = b.readUInt16LE(18);
  const shoff = Number(b.readBigUInt64LE(40));
  const shentsize = b.readUInt16LE(58);
  const shnum = b.readUInt16LE(60);
  const shstrndx = b.readUInt16LE(62);
  const section = (i: number) => {
    const o = shoff + i * shentsize;
    return { name: b.readUInt32LE(o), offset: Number(b.readBigUInt64LE(o + 24)), size: Number(b.readBigUInt64LE(o + 32)) };
  };
  const names = section(shstrndx);
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    const start = names.offset + s.name;
    const name = b.subarray(start, b.indexOf(0, start)).toString("latin1");
    if (name === ".text") return { machine, text: b.subarray(s.offset, s.offset + s.size) };
  }
  throw new Error(`${path}: no .text section`);
}

describe("npm run release", () => {
  test("writes install.sh, three binaries and sha256sum.txt", () => {
    for (const f of RELEASE_FILES) expect(statSync(join(dir, f)).size).toBeGreaterThan(0);
    expect(readFileSync(join(dir, "install.sh"), "utf8")).toBe(readFileSync(join(REPO, "install.sh"), "utf8"));
    for (const t of RELEASE_TARGETS) expect(statSync(join(dir, t.file)).mode & 0o111).toBe(0o111);
  });

  test("sha256sum.txt has one right line per file and passes sha256sum -c", () => {
    const lines = readFileSync(join(dir, "sha256sum.txt"), "utf8").trimEnd().split("\n");
    const files = RELEASE_FILES.filter((f) => f !== "sha256sum.txt");
    expect(lines.map((l) => l.split("  ")[1]).sort()).toEqual([...files].sort());
    for (const l of lines) {
      const [sum, file] = l.split("  ") as [string, string];
      expect(sum).toMatch(/^[0-9a-f]{64}$/);
      expect(sha256File(join(dir, file))).toBe(sum);
    }
    const r = Bun.spawnSync(["sha256sum", "-c", "sha256sum.txt"], { cwd: dir, stdout: "pipe", stderr: "pipe", timeout: 60_000 });
    expect(r.stderr.toString()).toBe("");
    expect(r.exitCode).toBe(0);
  });

  test("each binary is an ELF executable for its machine, built on its target's Bun runtime", () => {
    for (const t of RELEASE_TARGETS) {
      const elf = readElf(join(dir, t.file));
      expect({ file: t.file, machine: elf.machine }).toEqual({ file: t.file, machine: t.elfMachine });
      const runtime = readElf(ensureRuntime(t.runtimePackage, join(CACHE_ROOT, "bun-runtimes")));
      expect(runtime.machine).toBe(t.elfMachine);
      expect(elf.text.equals(runtime.text)).toBe(true);
    }
  });

  test("the x64 binaries run from an empty folder and print the release version", () => {
    const empty = mkdtempSync(join(tmpdir(), "flannel-bin-release-"));
    try {
      for (const f of ["flannel-bin-linux-amd64", "flannel-bin-linux-amd64-baseline"]) {
        const r = Bun.spawnSync([join(dir, f), "--version"], { cwd: empty, stdout: "pipe", stderr: "pipe", timeout: 30_000 });
        expect({ f, out: r.stdout.toString().trim(), code: r.exitCode }).toEqual({ f, out: VERSION, code: 0 });
      }
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });
});
