// The one place that says how flannel-bin is compiled: `npm run build` (this host) and `npm run release` (every
// release target) both call compileBinary, so every binary is built with the same flags.
import pkg from "../package.json" with { type: "json" };

export const VERSION: string = pkg.version;

export interface CompileOptions {
  outfile: string;
  /** A Bun compile target such as "bun-linux-x64-baseline"; default: this host. */
  target?: Bun.Build.CompileTarget;
  /** The target's Bun runtime (from the npm registry), so cross-compiling downloads nothing itself. */
  executablePath?: string;
}

/** Compiles src/main.ts into one self-contained executable that reads no .env or bunfig.toml where it runs. */
export async function compileBinary(o: CompileOptions): Promise<void> {
  const result = await Bun.build({
    entrypoints: ["src/main.ts"],
    compile: {
      outfile: o.outfile,
      autoloadDotenv: false,
      autoloadBunfig: false,
      // Start-up code runs once: interpreting it costs less than compiling it (src/jit-policy.ts restores the normal
      // policy for bulk work).
      jitPolicy: 100,
      ...(o.target ? { target: o.target } : {}),
      ...(o.executablePath ? { executablePath: o.executablePath } : {}),
    },
    minify: true,
    bytecode: true,
    // Dynamic imports (each store, the lab, consola's own reporters) become chunks of their own, loaded when imported:
    // in one file, the Node built-ins they import (tls, readline, tty, crypto, ...) were loaded at every start
    // (agent start on SQLite: ~50 -> ~36 ms of its own CPU; --version 12 -> 9 ms).
    splitting: true,
    target: "bun",
    format: "esm",
    define: { FLANNEL_BIN_VERSION: JSON.stringify(VERSION) },
  });
  if (!result.success) {
    const logs = result.logs.map((m) => String(m)).join("\n");
    throw new Error(`compiling ${o.outfile}${o.target ? ` for ${o.target}` : ""} failed:\n${logs}`);
  }
}
