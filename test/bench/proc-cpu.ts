// CPU of a benchmarked process from /proc: per thread (schedstat, ns precision) and its waited-for children.
import { readdirSync, readFileSync } from "node:fs";

/** /proc/<pid>/stat: its parent and CPU seconds (clock ticks of 1/100 s): own (utime + stime), waited-for
 * children's (cutime + cstime). Fields are counted after the ")" closing the command name, which may hold spaces. */
function readStat(pid: number | string): { ppid: number; self: number; children: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { ppid: Number(f[1]), self: (Number(f[11]) + Number(f[12])) / 100, children: (Number(f[13]) + Number(f[14])) / 100 };
}

/** CPU seconds from /proc/<pid>/stat: own (utime + stime), waited-for children's (cutime + cstime). */
export function statCpu(pid: number): { self: number; children: number } {
  const { self, children } = readStat(pid);
  return { self, children };
}

/**
 * CPU seconds of the processes alive now whose parent is in `pids`, summed per parent: a child's CPU reaches its
 * parent's cutime only when it is reaped, and an agent keeps some (kernel monitors, a kept batch process).
 */
export function liveChildrenCpu(pids: number[]): Map<number, number> {
  const want = new Set(pids);
  const out = new Map<number, number>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const { ppid, self } = readStat(name);
      if (want.has(ppid)) out.set(ppid, (out.get(ppid) ?? 0) + self);
    } catch {
      // the process ended between the listing and the read
    }
  }
  return out;
}

/** CPU time per thread in seconds, in nanoseconds' precision (schedstat), keyed "tid name". The process's own
 * stat counts in 10 ms ticks, too coarse for an idle goal of 0.05 s. */
export function threadCpu(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const ns = Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]);
      out.set(`${tid} ${readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trim()}`, ns / 1e9);
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return out;
}

/** One CPU reading of the agent: its threads (schedstat) and its children, reaped or alive (a child reaped between
 * two readings moves from one to the other, so only what it used in between counts). */
export function cpuReading(pid: number): { threads: Map<string, number>; children: number } {
  const live = liveChildrenCpu([pid]).get(pid) ?? 0; // first: one reaped meanwhile counts twice, never not at all
  return { threads: threadCpu(pid), children: statCpu(pid).children + live };
}

/**
 * Adds each thread's CPU in `now` since `before` (a thread not in `before` counts from 0) to `byName`, keyed by
 * thread name; returns the sum.
 */
function addByName(byName: Map<string, number>, now: Map<string, number>, before?: Map<string, number>): number {
  let total = 0;
  for (const [key, s] of now) {
    const d = s - (before?.get(key) ?? 0);
    total += d;
    const name = key.slice(key.indexOf(" ") + 1);
    byName.set(name, (byName.get(name) ?? 0) + d);
  }
  return total;
}

/** CPU between two readings, total and per thread name (threads that ended in between count from 0 to their last
 * reading; threads that started count from 0). */
export function cpuBetween(a: ReturnType<typeof cpuReading>, b: ReturnType<typeof cpuReading>) {
  const byName = new Map<string, number>();
  const total = b.children - a.children + addByName(byName, b.threads, a.threads);
  return { total, byName };
}

/** Per thread name, the CPU seconds of every process in `pids` so far (threads that ended are not counted). */
export function cpuByThreadName(pids: number[]): Map<string, number> {
  const byName = new Map<string, number>();
  for (const pid of pids) addByName(byName, threadCpu(pid));
  return byName;
}
