// Issue 12: peak memory of an agent with 20 hostile 1 MB lease records present (and re-put twice while it runs),
// against the same agent without them. Each record is over the 64 KB value limit and must be dropped before it is
// decoded or copied. Root (network namespaces). Prints one line per case and the difference.
//   bun test/bench/hostile-memory.ts [sqlite|etcd]
import { readFileSync } from "node:fs";
import { AgentLab, until } from "../helpers/agents.ts";
import { SqliteStore } from "../../stores/sqlite.ts";

const RECORDS = 20;
const SIZE = 1024 * 1024;

function vmHWM(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : Number.NaN;
}

async function run(records: number): Promise<number> {
  const lab = new AgentLab();
  try {
    lab.putConfig('{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}');
    const big = new TextEncoder().encode(`{"PublicIP":"192.0.2.9","Pad":"${"x".repeat(SIZE)}"}`);
    const s = SqliteStore.open(lab.db);
    for (let i = 0; i < records; i++) await s.create(`subnets/10.5.${200 + i}.0-24`, big, { ttlMs: 600_000 });
    const h = lab.addHost();
    lab.start(h, ["--subnet-lease-ttl", "60s"]);
    if (!(await until(() => lab.health(h, "/readyz") === 200, 30_000))) throw new Error("agent not ready");
    for (let round = 0; round < 2; round++)
      for (let i = 0; i < records; i++) {
        const k = `subnets/10.5.${200 + i}.0-24`;
        const cur = await s.get(k);
        if (cur) await s.update(k, big, cur.revision, { ttlMs: 600_000 });
      }
    await s.close();
    await Bun.sleep(2000); // the agent's watch has seen every re-put
    return vmHWM(h.proc!.pid);
  } finally {
    lab.cleanup();
  }
}

const without = await run(0);
const withBig = await run(RECORDS);
console.log(`agent peak RSS without hostile records: ${without.toFixed(1)} MB`);
console.log(`agent peak RSS with ${RECORDS} x 1 MB records (+2 re-puts each): ${withBig.toFixed(1)} MB`);
console.log(`difference: ${(withBig - without).toFixed(1)} MB (goal: within 10 MB)`);
