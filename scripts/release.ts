// `npm run release`: writes dist/release/ with install.sh, one binary per supported host and sha256sum.txt
// (`sha256sum -c` format). Each target's Bun runtime is the @oven/bun-linux-* package of the pinned Bun version,
// fetched with `npm pack` from the npm registry into a cache (FLANNEL_BIN_RUNTIME_CACHE), so cross-compiling never
// downloads a runtime from anywhere else and a second run downloads nothing.
import { createHash } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { basename, join, resolve } from "node:path";
import pkg from "../package.json" with { type: "json" };
import { VERSION, compileBinary } from "./compile.ts";

const REPO = resolve(import.meta.dir, "..");
const BUN_VERSION: string = pkg.devDependencies.bun;

export interface ReleaseTarget {
  /** File name in dist/release/. */
  file: string;
  target: Bun.Build.CompileTarget;
  /** npm package holding that target's runtime at package/bin/bun. */
  runtimePackage: string;
  /** ELF e_machine of the result: 62 = x86-64, 183 = AArch64. */
  elfMachine: number;
}

export const RELEASE_TARGETS: readonly ReleaseTarget[] = [
  { file: "flannel-bin-linux-amd64", target: "bun-linux-x64", runtimePackage: "@oven/bun-linux-x64", elfMachine: 62 },
  // Bun's default x64 runtime needs AVX2 ("Illegal instruction" without it); baseline runs on any x86-64-v2 CPU.
  {
    file: "flannel-bin-linux-amd64-baseline",
    target: "bun-linux-x64-baseline",
    runtimePackage: "@oven/bun-linux-x64-baseline",
    elfMachine: 62,
  },
  { file: "flannel-bin-linux-arm64", target: "bun-linux-arm64", runtimePackage: "@oven/bun-linux-aarch64", elfMachine: 183 },
];

export function runtimeCacheDir(): string {
  return resolve(process.env.FLANNEL_BIN_RUNTIME_CACHE ?? join(homedir(), ".cache/flannel-bin/bun-runtimes"));
}

function run(cmd: string[], cwd: string): string {
  const r = Bun.spawnSync(cmd, { cwd, stdout: "pipe", stderr: "pipe", timeout: 600_000, killSignal: "SIGKILL" });
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")} failed (exit ${r.exitCode}):\n${r.stderr.toString()}`);
  return r.stdout.toString();
}

/** The runtime binary of `runtimePackage`@BUN_VERSION, from the cache or fetched once with `npm pack`. */
export function ensureRuntime(runtimePackage: string, cacheDir = runtimeCacheDir()): string {
  const dir = join(cacheDir, `${runtimePackage.replace("/", "+")}@${BUN_VERSION}`);
  const bin = join(dir, "package/bin/bun");
  if (existsSync(bin)) return bin;
  mkdirSync(cacheDir, { recursive: true });
  const tmp = mkdtempSync(join(cacheDir, ".pack-"));
  try {
    // npm checks the tarball against the registry's integrity hash.
    const out = run(["npm", "pack", "--silent", `${runtimePackage}@${BUN_VERSION}`, "--pack-destination", tmp], tmp);
    const tgz = join(tmp, out.trim().split("\n").pop() ?? "");
    if (!existsSync(tgz)) throw new Error(`npm pack ${runtimePackage}@${BUN_VERSION} wrote no tarball (said: ${out.trim()})`);
    mkdirSync(join(tmp, "x"));
    run(["tar", "-xzf", tgz, "-C", join(tmp, "x")], tmp);
    if (!existsSync(join(tmp, "x/package/bin/bun"))) throw new Error(`${runtimePackage}@${BUN_VERSION} has no package/bin/bun`);
    // One rename, so a killed run leaves no half-extracted runtime; another build may have finished it meanwhile.
    if (!existsSync(bin)) {
      rmSync(dir, { recursive: true, force: true });
      renameSync(join(tmp, "x"), dir);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return bin;
}

export function sha256File(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

/** Builds every release file into `outDir` (replaced whole at the end). */
export async function release(outDir = join(REPO, "dist/release")): Promise<string[]> {
  if (Bun.version !== BUN_VERSION) throw new Error(`release builds need Bun ${BUN_VERSION} (package.json), this is ${Bun.version}`);
  const work = `${outDir}.tmp`;
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const files: string[] = [];
  for (const t of RELEASE_TARGETS) {
    const runtime = ensureRuntime(t.runtimePackage);
    const out = join(work, t.file);
    await compileBinary({ outfile: out, target: t.target, executablePath: runtime });
    files.push(t.file);
    console.log(`built ${t.file} (${t.target}, runtime ${t.runtimePackage}@${BUN_VERSION})`);
  }
  copyFileSync(join(REPO, "install.sh"), join(work, "install.sh"));
  files.push("install.sh");
  const sums = files.map((f) => `${sha256File(join(work, f))}  ${f}\n`).join("");
  writeFileSync(join(work, "sha256sum.txt"), sums);
  rmSync(outDir, { recursive: true, force: true });
  renameSync(work, outDir);
  return [...files, "sha256sum.txt"];
}

if (import.meta.main) {
  try {
    const files = await release();
    console.log(`dist/release/ (flannel-bin ${VERSION}): ${files.map((f) => basename(f)).join(", ")}`);
  } catch (e) {
    console.error((e as Error).message);
    process.exit(1);
  }
}
