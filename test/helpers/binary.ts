// The compiled binary under test, rebuilt whenever a source is newer than it: a local `bun test` of agent or e2e
// tests must never run an old dist/flannel-bin after an edit. FLANNEL_BIN_E2E_BINARY points at another binary.
import { existsSync, readdirSync, statSync } from "node:fs";
import { join, resolve } from "node:path";

export const REPO = resolve(import.meta.dir, "../..");
export const BINARY = join(REPO, "dist/flannel-bin");

/** Newest modification time (ms) of everything the build reads. */
export function newestSource(): number {
  let newest = 0;
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".ts") || e.name.endsWith(".json")) newest = Math.max(newest, statSync(p).mtimeMs);
    }
  };
  for (const d of ["src", "stores", "backends"]) walk(join(REPO, d));
  for (const f of ["package.json", "scripts/build.ts", "scripts/compile.ts"]) newest = Math.max(newest, statSync(join(REPO, f)).mtimeMs);
  return newest;
}

/** Builds dist/flannel-bin if it is missing or older than a source (bounded: 5 minutes); returns its path. */
export function ensureBinary(): string {
  const override = process.env.FLANNEL_BIN_E2E_BINARY;
  if (override) {
    if (!existsSync(override)) throw new Error(`FLANNEL_BIN_E2E_BINARY=${override} does not exist`);
    return resolve(override);
  }
  if (existsSync(BINARY) && statSync(BINARY).mtimeMs >= newestSource()) return BINARY;
  // Without bun test's NODE_ENV=test: the bundler bakes it in, and consola then drops every info line from the
  // binary's log (the binary `scripts/test.sh` builds has them).
  const { NODE_ENV: _, ...env } = process.env;
  const r = Bun.spawnSync([join(REPO, "node_modules/.bin/bun"), "run", "build"], {
    cwd: REPO,
    env,
    stdout: "pipe",
    stderr: "pipe",
    timeout: 300_000,
    killSignal: "SIGKILL",
  });
  if (r.exitCode !== 0 || !existsSync(BINARY)) {
    throw new Error(`bun run build failed (exit ${r.exitCode}):\n${r.stdout.toString()}\n${r.stderr.toString()}`);
  }
  return BINARY;
}

/**
 * A lab or namespace name for a test, prefixed with FLANNEL_BIN_TEST_PREFIX (1-3 lower-case letters/digits) so that
 * two checkouts can run the suite side by side on one machine without tearing down each other's labs.
 */
export function testName(base: string): string {
  const p = process.env.FLANNEL_BIN_TEST_PREFIX ?? "";
  if (!/^[a-z0-9]{0,3}$/.test(p)) throw new Error(`FLANNEL_BIN_TEST_PREFIX=${JSON.stringify(p)}: 0-3 lower-case letters/digits`);
  return p + base;
}
