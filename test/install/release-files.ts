// dist/release/ for the install tests: rebuilt with `npm run release` (bounded) when missing or older than a source
// or install.sh. The Bun runtimes are cached in /var/cache/flannel-bin-test/bun-runtimes unless
// FLANNEL_BIN_RUNTIME_CACHE says otherwise, so a warm run downloads nothing.
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { REPO, newestSource } from "../helpers/binary.ts";

export const RELEASE_DIR = join(REPO, "dist/release");
export const CACHE_ROOT = "/var/cache/flannel-bin-test";
export const RELEASE_FILES = [
  "install.sh",
  "flannel-bin-linux-amd64",
  "flannel-bin-linux-amd64-baseline",
  "flannel-bin-linux-arm64",
  "sha256sum.txt",
] as const;

function releaseIsFresh(): boolean {
  const sums = join(RELEASE_DIR, "sha256sum.txt");
  if (!RELEASE_FILES.every((f) => existsSync(join(RELEASE_DIR, f)))) return false;
  const newest = Math.max(newestSource(), statSync(join(REPO, "install.sh")).mtimeMs, statSync(join(REPO, "scripts/release.ts")).mtimeMs);
  return statSync(sums).mtimeMs >= newest;
}

/** Runs `bun run release` unless dist/release/ is up to date; returns the folder. */
export function ensureRelease(): string {
  if (releaseIsFresh()) return RELEASE_DIR;
  // Without bun test's NODE_ENV=test: the bundler would bake it in (see test/helpers/binary.ts).
  const { NODE_ENV: _, ...env } = process.env;
  const r = Bun.spawnSync([join(REPO, "node_modules/.bin/bun"), "run", "release"], {
    cwd: REPO,
    env: { ...env, FLANNEL_BIN_RUNTIME_CACHE: process.env.FLANNEL_BIN_RUNTIME_CACHE ?? join(CACHE_ROOT, "bun-runtimes") },
    stdout: "pipe",
    stderr: "pipe",
    timeout: 900_000,
    killSignal: "SIGKILL",
  });
  if (r.exitCode !== 0) throw new Error(`npm run release failed (exit ${r.exitCode}):\n${r.stdout.toString()}\n${r.stderr.toString()}`);
  return RELEASE_DIR;
}
