// Builds dist/flannel-bin: one self-contained executable (Bun runtime + bytecode), that reads no .env or
// bunfig.toml from the directory it runs in.
import pkg from "../package.json" with { type: "json" };

const result = await Bun.build({
  entrypoints: ["src/main.ts"],
  compile: { outfile: "dist/flannel-bin", autoloadDotenv: false, autoloadBunfig: false },
  minify: true,
  bytecode: true,
  target: "bun",
  format: "esm",
  define: { FLANNEL_BIN_VERSION: JSON.stringify(pkg.version) },
});
if (!result.success) {
  for (const m of result.logs) console.error(m);
  process.exit(1);
}
console.log(`built dist/flannel-bin ${pkg.version}`);
