// An abortable sleep: resolves after `ms`, or at once when `signal` aborts. It removes its abort listener either
// way, so loops that sleep while a long-lived signal stays unaborted do not pile listeners up.
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const t = setTimeout(done, Math.min(ms, 2 ** 31 - 1));
    signal.addEventListener("abort", done, { once: true });
  });
}
