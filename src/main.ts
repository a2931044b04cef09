#!/usr/bin/env bun
// Entry point of the flannel-bin binary. First the agent's re-exec with its runtime settings (runtime-env.ts), then
// the command (dispatch.ts). Only runtime-env.ts is imported statically: an ES module's static imports are all
// loaded before any of them runs, so with the commands imported here too, the process that re-executes itself
// would load the whole program first for nothing (`run` up to a flag error: 32.5-35.2 -> 25.8-29.3 ms of CPU,
// medians of 20; `--version` the same).
import { reexecWithAgentRuntimeEnv } from "./runtime-env.ts";

reexecWithAgentRuntimeEnv();
await import("./dispatch.ts");
