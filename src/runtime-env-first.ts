// Imported first by src/main.ts: runs before any other module of the binary is loaded, so a re-exec costs only the
// runtime's own start (see runtime-env.ts).
import { reexecWithAgentRuntimeEnv } from "./runtime-env.ts";

reexecWithAgentRuntimeEnv();
