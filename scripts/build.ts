// Builds dist/flannel-bin for this host (flags shared with the release build: scripts/compile.ts).
import { VERSION, compileBinary } from "./compile.ts";

try {
  await compileBinary({ outfile: "dist/flannel-bin" });
} catch (e) {
  console.error((e as Error).message);
  process.exit(1);
}
console.log(`built dist/flannel-bin ${VERSION}`);
