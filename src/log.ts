// Tagged loggers that follow consola's current reporters: consola.withTag() copies the reporter list when it is
// called, so a logger made at import time would never reach a reporter added later (tests capture logs that way).
import { type ConsolaInstance, consola } from "consola";

export function logger(tag: string): ConsolaInstance {
  return new Proxy({} as ConsolaInstance, { get: (_t, prop) => Reflect.get(consola.withTag(tag), prop) });
}
