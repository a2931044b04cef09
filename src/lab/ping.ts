// Reachability in the lab: ping runs parsed, one pair at a time or every pair of hosts' containers at once.
import { execIn } from "./netns.ts";
import type { LabHost, LabState } from "./state.ts";

export interface PairReport {
  from: string;
  to: string;
  toIP: string;
  ok: boolean;
  /** Average RTT in ms, when ok. */
  rttMs: number | null;
  detail: string;
}

/** One ping run: `ping -c N -W 1 -i 0.2`, parsed. */
export async function pingFrom(
  netns: string,
  target: string,
  opts: { count?: number; size?: number; dontFragment?: boolean } = {},
): Promise<{ ok: boolean; rttMs: number | null; output: string }> {
  const count = opts.count ?? 3;
  const cmd = ["ping", "-n", "-c", String(count), "-W", "1", "-i", "0.2"];
  if (opts.size !== undefined) cmd.push("-s", String(opts.size));
  if (opts.dontFragment) cmd.push("-M", "do");
  cmd.push(target);
  const r = await execIn(netns, cmd, { allowFail: true, timeoutMs: 5000 + count * 1500 });
  const m = /= [\d.]+\/([\d.]+)\//.exec(r.stdout);
  const received = /(\d+) received/.exec(r.stdout);
  const ok = r.code === 0 && received !== null && Number(received[1]) > 0;
  return { ok, rttMs: ok && m ? Number(m[1]) : null, output: (r.stdout + r.stderr).trim() };
}

async function pingPair(from: LabHost, to: LabHost, converge: boolean, count: number): Promise<PairReport> {
  const base = { from: from.netns, to: to.netns, toIP: to.containerIP ?? to.publicIP };
  const src = from.containerNetns ?? from.netns;
  // While routes converge (peers learn about each other via the store watch), retry a bounded number of times.
  const attempts = converge ? 8 : 1;
  const deadline = Date.now() + (converge ? 20_000 : 8_000);
  let last = { ok: false, rttMs: null as number | null, output: "" };
  for (let a = 0; a < attempts && Date.now() < deadline; a++) {
    last = await pingFrom(src, base.toIP, { count });
    if (last.ok) return { ...base, ok: true, rttMs: last.rttMs, detail: "" };
    await Bun.sleep(500);
  }
  const lastLine =
    last.output
      .split("\n")
      .filter((l) => l.trim() !== "")
      .pop() ?? "";
  return { ...base, ok: false, rttMs: null, detail: lastLine };
}

/** Pings every pair of (live) hosts' containers; from the host namespaces if there are no containers. */
export async function pingAllPairs(
  s: LabState,
  opts: { converge?: boolean; count?: number; hosts?: LabHost[] } = {},
): Promise<PairReport[]> {
  const hosts = opts.hosts ?? s.hosts;
  const jobs: Promise<PairReport>[] = [];
  for (const a of hosts) for (const b of hosts) if (a !== b) jobs.push(pingPair(a, b, opts.converge ?? false, opts.count ?? 3));
  return Promise.all(jobs);
}
