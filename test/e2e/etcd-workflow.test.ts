// The classic flannel setup guides' etcd workflow, in its v3 form, end to end against a real etcd:
//   ETCDCTL_API=3 etcdctl --endpoints=http://<ip>:<port> put /kube-centos/network/config '{"Network":"172.30.0.0/16",…}'
//   flannel-bin run -etcd-endpoints=http://<ip>:<port> -etcd-prefix=/kube-centos/network     (on every host)
//   ETCDCTL_API=3 etcdctl get --prefix /kube-centos/network/subnets    -> one flannel lease per host
//
// Topology: a lab built topology-only (underlay e2ew-ul + host e2ew-h1), etcd started by this test inside the
// underlay on 192.0.2.1. lab.json's store flags are then set to the guide's two Go-style flags, so labAddHost
// starts each further host's agent with exactly them (plus --iface/--subnet-file/--healthz-*) and gives it a
// container. h1 is kept for the agent pointed at a dead endpoint. The tests run in order and build on each other.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, rmSync, rmdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { DEFAULT_CONFIG_EXAMPLE } from "../../src/config.ts";
import { type EtcdServer, startEtcdServer } from "../harness/etcd-server.ts";
import { type LabHost, labAddHost, labDown, labUp, pingAllPairs, readSubnetEnv } from "../../src/lab/lab.ts";
import { addrAdd, processAlive, processArgv, spawnDetachedIn, stopProcess } from "../../src/lab/netns.ts";
import { ensureBinary, etcdctl, host, labState, peerInfo, updateLabState, waitUntil, testName } from "./helpers.ts";

// Explicit: these tests wait (bounded) for agents and kernels, longer than bun's default per-test timeout.
const TEST_TIMEOUT_MS = 90_000;
const LAB = { name: testName("e2ew") };
const UL = `${LAB.name}-ul`;
const PREFIX = "/kube-centos/network";
const CONFIG = '{"Network":"172.30.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}';
// For the dead-endpoint test: an address of the underlay namespace (added below) on which nothing listens.
const DEAD_ENDPOINT = "http://192.0.2.250:2379";
// Where an agent that ignored the etcd flags would put its SQLite file (the default --sqlite-path).
const DEFAULT_SQLITE = "/var/lib/flannel-bin/flannel.db";

let binary: string;
let etcd: EtcdServer | null = null;
let endpoint: string;
let guideFlags: string[];
/** Set once the first host came up on etcd: the later tests build on it. */
let firstHostUp = false;

const readLog = (h: { logFile: string }) => (existsSync(h.logFile) ? readFileSync(h.logFile, "utf8") : "");
const rmdirIfEmpty = (dir: string) => {
  try {
    rmdirSync(dir);
  } catch {
    /* not empty or gone */
  }
};
const count = (text: string, needle: string) => text.split(needle).length - 1;

beforeAll(async () => {
  binary = await ensureBinary();
  await labDown(LAB); // leftovers of an interrupted earlier run (only what its lab.json recorded)
  await labUp({ ...LAB, hosts: 1, topologyOnly: true, binary });
  // Data dir inside the lab's state dir: labDown removes it even if this process dies before etcd.stop().
  etcd = await startEtcdServer({ netns: UL, host: "192.0.2.1", dataDir: join(labState(LAB).stateDir, "etcd-data") });
  endpoint = etcd.endpoint;
  await addrAdd(UL, "br0", "192.0.2.250/24");
  guideFlags = [`-etcd-endpoints=${endpoint}`, `-etcd-prefix=${PREFIX}`];
  updateLabState(LAB, (s) => {
    s.store = "etcd";
    s.storeFlags = guideFlags;
  });
}, 120_000);

afterAll(async () => {
  await etcd?.stop();
  const r = await labDown(LAB);
  if (r.errors.length) console.error(r.errors);
}, 60_000);

/**
 * labAddHost, watching the new host's agent log: if the agent says it uses the SQLite store (it ignored the etcd
 * flags), it is stopped at once by PID, instead of waiting for a config that will never come.
 */
async function addHostWatched(onLog?: (log: string, h: { logFile: string }) => Promise<void>): Promise<LabHost> {
  const index = Math.max(...labState(LAB).hosts.map((h) => h.index)) + 1;
  const logFile = join(labState(LAB).stateDir, `${LAB.name}-h${index}`, "agent.log");
  const sqliteExisted = existsSync(DEFAULT_SQLITE);
  const sqliteDirExisted = existsSync(dirname(DEFAULT_SQLITE));
  let done = false;
  const adding = labAddHost({ ...LAB, readyTimeoutMs: 40_000 }).finally(() => (done = true));
  adding.catch(() => {}); // awaited below
  const stopAgent = async () => {
    const pid = labState(LAB).hosts.find((h) => h.index === index)?.agentPid;
    if (pid) await stopProcess(pid, `${LAB.name}-h${index}`);
    await adding.catch(() => {}); // labAddHost sees the agent exit and gives up: nothing of it runs on
  };
  for (let i = 0; i < 2000 && !done; i++) {
    const log = readLog({ logFile });
    if (log.includes("using the sqlite store")) {
      await stopAgent();
      // Remove what that agent created there (only that).
      if (!sqliteExisted) for (const p of [DEFAULT_SQLITE, `${DEFAULT_SQLITE}-wal`, `${DEFAULT_SQLITE}-shm`]) rmSync(p, { force: true });
      if (!sqliteDirExisted) rmdirIfEmpty(dirname(DEFAULT_SQLITE));
      throw new Error(
        `\`flannel-bin run ${guideFlags.join(" ")}\` used the SQLite store, not etcd: the etcd flags alone must select etcd (as with flanneld). Log:\n${log}`,
      );
    }
    try {
      if (onLog) await onLog(log, { logFile });
    } catch (e) {
      await stopAgent();
      throw e;
    }
    await Bun.sleep(100);
  }
  return adding;
}

describe("etcd workflow of the flannel setup guides (etcd v3, Go-style flags)", () => {
  test(
    "before the config exists, the agent logs the exact etcdctl put command once, retries, and proceeds once it is put",
    async () => {
      // The whole command, ready to paste (with the agent's example config).
      const hint = `ETCDCTL_API=3 etcdctl --endpoints=${endpoint} put ${PREFIX}/config '${DEFAULT_CONFIG_EXAMPLE}'`;
      let hintSeenAt = 0;
      let put = false;
      const h = await addHostWatched(async (log, { logFile }) => {
        if (put || !log.includes("network config not found")) return;
        hintSeenAt ||= Date.now();
        // Let it retry (every second) a few times before the config appears.
        if (Date.now() - hintSeenAt < 3500) return;
        expect(count(log, "network config not found")).toBe(1);
        expect(count(log, hint)).toBe(1);
        expect(existsSync(join(logFile, "..", "subnet.env"))).toBe(false);
        await etcdctl(`${LAB.name}-h1`, endpoint, ["put", `${PREFIX}/config`, CONFIG]);
        put = true;
      });
      expect(put).toBe(true);
      // The very process that waited (no restart) took a lease from the config put meanwhile.
      const argv = processArgv(h.agentPid!)!;
      expect(argv.slice(argv.indexOf("run") + 1, argv.indexOf("run") + 3)).toEqual(guideFlags);
      expect(argv).not.toContain("--store");
      expect(readSubnetEnv(h)).toMatchObject({ network: "172.30.0.0/16", mtu: 1450 });
      expect(readSubnetEnv(h)!.subnet).toMatch(/^172\.30\.\d{1,3}\.1\/24$/);
      const log = readLog(h);
      expect(count(log, "network config not found")).toBe(1); // once, although it retried every second
      expect(log).toContain(`using the etcd store`);
      firstHostUp = true;
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "etcdctl get --prefix lists exactly one flannel-format lease per host, each on an etcd lease of 86400 s",
    async () => {
      expect(firstHostUp).toBe(true);
      await addHostWatched();
      const hosts = [host(LAB, 2), host(LAB, 3)];

      // Plain output: key and value lines, the value as stored (byte for byte).
      const lines = (await etcdctl(UL, endpoint, ["get", "--prefix", `${PREFIX}/subnets`])).split("\n").filter((l) => l !== "");
      expect(lines).toHaveLength(2 * hosts.length);
      const leases = new Map<string, string>();
      for (let i = 0; i < lines.length; i += 2) leases.set(lines[i]!, lines[i + 1]!);
      for (const h of hosts) {
        const peer = await peerInfo(h);
        const key = `${PREFIX}/subnets/${peer.subnetIP}-24`;
        expect(key).toMatch(/^\/kube-centos\/network\/subnets\/172\.30\.\d{1,3}\.0-24$/);
        const mac = peer.vtepMac!;
        // Lower-case, colon-separated, locally administered (bit 1 of the first octet), unicast (bit 0 clear).
        expect(mac).toMatch(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
        expect(Number.parseInt(mac.slice(0, 2), 16) & 0b11).toBe(0b10);
        expect(leases.get(key)).toBe(
          `{"PublicIP":"${h.publicIP}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"${mac}"}}`,
        );
      }

      // JSON output for the etcd lease IDs (int64: kept as strings, they exceed 2^53).
      const raw = await etcdctl(UL, endpoint, ["get", "--prefix", `${PREFIX}/subnets`, "-w", "json"]);
      const kvs = (JSON.parse(raw.replace(/"lease":(\d+)/g, '"lease":"$1"')) as { kvs: { key: string; lease?: string }[] }).kvs;
      expect(kvs).toHaveLength(hosts.length);
      const ids = new Set<string>();
      for (const kv of kvs) {
        const key = Buffer.from(kv.key, "base64").toString();
        expect(kv.lease).toMatch(/^[1-9]\d*$/);
        const id = BigInt(kv.lease!).toString(16);
        ids.add(id);
        const ttl = await etcdctl(UL, endpoint, ["lease", "timetolive", id, "--keys"]);
        const m = /granted with TTL\((\d+)s\), remaining\((\d+)s\), attached keys\(\[(.*)\]\)/.exec(ttl);
        expect(m).not.toBeNull();
        expect(Number(m![1])).toBe(86400);
        expect(Number(m![2])).toBeGreaterThan(86400 - 300);
        expect(m![3]).toBe(key);
      }
      expect(ids.size).toBe(hosts.length); // one etcd lease per key
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "containers on the two hosts ping each other",
    async () => {
      expect(firstHostUp).toBe(true);
      const pairs = await pingAllPairs(labState(LAB), { hosts: [host(LAB, 2), host(LAB, 3)], converge: true });
      expect(pairs).toHaveLength(2);
      expect(pairs.filter((p) => !p.ok)).toEqual([]);
      for (const p of pairs) expect(p.toIP).toMatch(/^172\.30\.\d{1,3}\.2$/);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "an agent whose only etcd endpoint has nothing listening names it in the log and keeps running",
    async () => {
      const h1 = host(LAB, 1);
      const argv = [
        binary,
        "run",
        "--store",
        "etcd",
        "--etcd-endpoints",
        DEAD_ENDPOINT,
        "--iface",
        "eth0",
        "--subnet-file",
        h1.subnetFile,
        "--healthz-port",
        "0",
      ];
      const pid = spawnDetachedIn(h1.netns, argv, h1.logFile);
      // Recorded at once, so labDown stops it even if this test dies half-way.
      updateLabState(LAB, (s) => (s.hosts.find((h) => h.index === 1)!.agentPid = pid));
      try {
        const started = Date.now();
        await waitUntil(`the log of pid ${pid} names ${DEAD_ENDPOINT}`, 20_000, async () => readLog(h1).includes(DEAD_ENDPOINT), 200);
        // Still there a few seconds later: it retries rather than exits.
        await Bun.sleep(Math.max(0, 4000 - (Date.now() - started)));
        expect(processAlive(pid)).toBe(true);
        const log = readLog(h1);
        expect(log).toMatch(/etcd unavailable at every endpoint: http:\/\/192\.0\.2\.250:2379 \(.*\(retrying every second\)/);
        expect(existsSync(h1.subnetFile)).toBe(false);
      } finally {
        expect(await stopProcess(pid, h1.subnetFile)).toBe(true);
        expect(processAlive(pid)).toBe(false);
        updateLabState(LAB, (s) => (s.hosts.find((h) => h.index === 1)!.agentPid = null));
      }
    },
    TEST_TIMEOUT_MS,
  );
});
