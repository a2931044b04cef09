// Preloaded by bunfig.toml for every test file: real servers, agent processes and namespaces take seconds,
// so the default 5 s per test is too short. Every wait inside a test is bounded on its own.
import { setDefaultTimeout } from "bun:test";

setDefaultTimeout(120_000);
