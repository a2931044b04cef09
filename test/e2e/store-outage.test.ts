// A store outage never touches the data plane (issue 11): the compiled agents in a 2-host vxlan lab on one NATS
// server (2.9: expiry lives in the value), --subnet-lease-ttl 20s, the server SIGSTOPped for 60 s while a container
// pings the other host's container every 200 ms. Every lease expires by its recorded time during the outage; no
// agent may remove a peer for it, so not one ping is lost, and /readyz stays 200 but says it is degraded.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { labDown, labUp, readLabState } from "../../src/lab/lab.ts";
import { execIn } from "../../src/lab/netns.ts";
import { ensureBinary, host, testName, waitUntil } from "./helpers.ts";

const LAB = { name: testName("e2out") };
const OUTAGE_MS = 60_000;

beforeAll(async () => {
  await labDown(LAB);
}, 60_000);
afterAll(async () => {
  const s = readLabState(LAB);
  for (const srv of s?.servers ?? []) {
    try {
      process.kill(srv.pid, "SIGCONT"); // never leave it stopped, even when the test failed half-way
    } catch {
      /* gone */
    }
  }
  const r = await labDown(LAB);
  if (r.errors.length) console.error(r.errors);
}, 60_000);

async function readyz(netns: string): Promise<{ code: string; body: string }> {
  const r = await execIn(netns, ["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", "http://127.0.0.1:8471/readyz"], {
    allowFail: true,
  });
  const lines = r.stdout.trimEnd().split("\n");
  return { code: lines.pop() ?? "", body: lines.join("\n") };
}

test("NATS server SIGSTOPped for 60 s with a 20 s lease TTL: 0 pings lost, peers kept, /readyz 200 degraded, then back", async () => {
  const binary = await ensureBinary();
  const report = await labUp({ ...LAB, hosts: 2, backend: "vxlan", store: "nats", binary, agentArgs: ["--subnet-lease-ttl", "20s"] });
  expect(report.pairs.filter((p) => !p.ok)).toEqual([]);
  const s = readLabState(LAB)!;
  const server = s.servers[0]!;
  const [h1, h2] = [host(LAB, 1), host(LAB, 2)];
  const count = Math.round((OUTAGE_MS + 8000) / 200);
  const ping = execIn(h1.containerNetns!, ["ping", "-n", "-q", "-i", "0.2", "-W", "1", "-c", String(count), h2.containerIP!], {
    timeoutMs: OUTAGE_MS + 30_000,
    allowFail: true,
  });
  await Bun.sleep(2000);
  process.kill(server.pid, "SIGSTOP");
  let degraded: { code: string; body: string } | null = null;
  try {
    await Bun.sleep(OUTAGE_MS - 15_000);
    degraded = await readyz(h1.netns);
    await Bun.sleep(15_000);
  } finally {
    process.kill(server.pid, "SIGCONT");
  }
  const out = (await ping).stdout;
  const m = /(\d+) packets transmitted, (\d+) received/.exec(out);
  expect(m).not.toBeNull();
  console.log(`ping through a 60 s store outage: ${m![1]} sent, ${m![2]} received`);
  expect(Number(m![1]) - Number(m![2])).toBe(0);
  expect(degraded!.code).toBe("200");
  expect(degraded!.body).toContain("degraded: store unreachable");
  // Back: both agents say so, and the store holds both leases again (each re-created its own on its subnet).
  await waitUntil("both agents to see the store again", 30_000, async () => {
    const [a, b] = await Promise.all([readyz(h1.netns), readyz(h2.netns)]);
    return a.code === "200" && b.code === "200" && !a.body.includes("degraded") && !b.body.includes("degraded");
  });
  const log1 = await Bun.file(h1.logFile).text();
  expect(log1).toContain("store unreachable");
  expect(log1).toContain("store reachable again");
  expect(log1).not.toMatch(/peer \S+ at \S+ removed/);
}, 150_000);
