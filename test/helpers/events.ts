// Reading a bounded number of events from an async generator in tests.

/** Collects items until `until` says stop, bounded by a deadline (ms). */
export async function collect<T>(it: AsyncGenerator<T>, until: (evs: T[]) => boolean, ms = 5000): Promise<T[]> {
  const evs: T[] = [];
  const deadline = Date.now() + ms;
  while (!until(evs) && Date.now() < deadline) {
    const r = await Promise.race([it.next(), Bun.sleep(deadline - Date.now()).then(() => null)]);
    if (!r || r.done) break;
    evs.push(r.value);
  }
  return evs;
}
