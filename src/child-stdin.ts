// Writing to a child process's stdin (Bun's FileSink) without leaving a rejected promise behind.
// Under backpressure write() and flush() hand out promises, and when the child has exited (ip aborting a batch,
// say) they reject with EPIPE. One left unawaited is an unhandled rejection, and that ends a Bun process: the agent
// would exit over a batch it already knows how to recover from. Every promise the sink returns is awaited here.
import type { FileSink } from "bun";

/**
 * Writes `text` (and flushes it unless told not to); false when the write is seen to fail (the pipe broke). Bun says
 * so once: later writes to the broken pipe return true and are dropped, so a caller keeps its own "broken" flag.
 */
export async function writeChild(sink: FileSink, text: string, flush = true): Promise<boolean> {
  const pending: Promise<unknown>[] = [];
  let ok = true;
  try {
    const w: unknown = sink.write(text);
    if (w instanceof Promise) pending.push(w);
    if (flush) {
      const f: unknown = sink.flush();
      if (f instanceof Promise) pending.push(f);
    }
  } catch {
    ok = false;
  }
  if (!pending.length) return ok;
  for (const s of await Promise.allSettled(pending)) if (s.status === "rejected") ok = false;
  return ok;
}

/** Ends the child's input; never rejects (a child that is gone has nothing more to read). */
export async function endChild(sink: FileSink): Promise<void> {
  try {
    const e: unknown = sink.end();
    if (e instanceof Promise) await e;
  } catch {
    // the pipe broke: the child exited first
  }
}
