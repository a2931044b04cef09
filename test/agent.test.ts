// The agent as real processes: the compiled binary, one network namespace per host, one shared SQLite file.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { type AgentHost, AgentLab, BINARY, ensureBinary, until } from "./helpers/agents.ts";

const HOST_GW = '{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}';

describe("agent processes", () => {
  // Each test has its own lab (namespaces, SQLite file), so any one of them can run alone or in any order.
  let lab: AgentLab;
  beforeAll(() => {
    ensureBinary();
  });
  beforeEach(() => {
    lab = new AgentLab();
  });
  afterEach(() => lab.cleanup());

  /** One agent holding a lease under the host-gw config (6 s TTL), ready. */
  async function readyAgent(): Promise<AgentHost> {
    lab.putConfig(HOST_GW);
    const h = lab.addHost();
    lab.start(h, ["--subnet-lease-ttl", "6s"]);
    expect(await until(() => lab.health(h, "/readyz") === 200, 15_000)).toBe(true);
    return h;
  }

  test("missing config: says how to create it, retries, then takes a lease; readyz 503 then 200", async () => {
    const h = lab.addHost();
    lab.start(h, ["--subnet-lease-ttl", "6s"]);
    expect(await until(() => lab.log(h).includes("flannel-bin config put"), 15_000)).toBe(true);
    expect(await until(() => lab.health(h, "/healthz") === 200, 5000)).toBe(true);
    expect(lab.health(h, "/readyz")).toBe(503);
    lab.putConfig(HOST_GW);
    expect(await until(() => lab.subnetOf(h), 10_000)).toMatch(/^10\.5\.\d+\.1\/24$/);
    expect(await until(() => lab.health(h, "/readyz") === 200, 10_000)).toBe(true);
  });

  test("renewal extends the expiry (short TTL)", async () => {
    const h = await readyAgent();
    const expiry = () => {
      const r = lab.cli(["leases", "--json", ...lab.storeFlags()]);
      return JSON.parse(r.out).find((l: { publicIP: string }) => l.publicIP === h.ip)?.expires as string | undefined;
    };
    const first = expiry()!;
    expect(first).toBeDefined();
    // TTL 6 s renews at half-life (3 s): a later expiry must show up well before the first one passes.
    const later = await until(() => {
      const e = expiry();
      return e && Date.parse(e) > Date.parse(first) ? e : undefined;
    }, 6000);
    expect(later).toBeDefined();
  });

  test("SIGTERM exits 0 and keeps the lease and subnet.env; a restart keeps the subnet", async () => {
    const h = await readyAgent();
    const subnet = lab.subnetOf(h);
    expect(await lab.stop(h)).toBe(0);
    expect(lab.subnetOf(h)).toBe(subnet);
    const leases = JSON.parse(lab.cli(["leases", "--json", ...lab.storeFlags()]).out);
    expect(leases.some((l: { publicIP: string }) => l.publicIP === h.ip)).toBe(true);
    lab.start(h, ["--subnet-lease-ttl", "6s"]);
    expect(await until(() => lab.health(h, "/readyz") === 200, 15_000)).toBe(true);
    expect(lab.subnetOf(h)).toBe(subnet);
  });

  test("the agent re-executes itself in place once, with Bun's idle GC timer off and mimalloc's purge delay 0; an operator's own setting is kept", async () => {
    const environ = (pid: number) => readFileSync(`/proc/${pid}/environ`, "latin1").split("\0");
    const cmdline = (pid: number) => readFileSync(`/proc/${pid}/cmdline`, "latin1").split("\0").slice(0, -1);
    const h = await readyAgent();
    const pid = h.proc!.pid; // \`ip netns exec\` execs the agent: this PID is the agent's
    expect(environ(pid)).toContain("BUN_GC_TIMER_DISABLE=1");
    expect(environ(pid)).toContain("MIMALLOC_PURGE_DELAY=0");
    expect(cmdline(pid)).toEqual([
      BINARY,
      "run",
      ...lab.storeFlags(),
      "--subnet-file",
      h.subnetFile,
      "--healthz-port",
      "8471",
      "--subnet-lease-ttl",
      "6s",
    ]);
    expect(await lab.stop(h)).toBe(0);
    lab.start(h, ["--subnet-lease-ttl", "6s"], { BUN_GC_TIMER_DISABLE: "0" });
    expect(await until(() => lab.health(h, "/readyz") === 200, 15_000)).toBe(true);
    expect(environ(h.proc!.pid)).toContain("BUN_GC_TIMER_DISABLE=0");
    expect(environ(h.proc!.pid)).toContain("MIMALLOC_PURGE_DELAY=0"); // the other setting is still added
  });

  test("a lease left to expire is freed and taken by the next host", async () => {
    const h = await readyAgent();
    const subnet = lab.subnetOf(h)!;
    await lab.stop(h);
    // The only free subnet is the one h held: the newcomer must wait for it to expire (6 s TTL).
    const net = subnet.replace(/\.1\/24$/, ".0");
    lab.putConfig(`{"Network":"10.5.0.0/16","SubnetMin":"${net}","SubnetMax":"${net}","Backend":{"Type":"host-gw"}}`);
    const h2 = lab.addHost();
    lab.start(h2, ["--subnet-lease-ttl", "6s"]);
    expect(await until(() => lab.subnetOf(h2), 20_000)).toBe(subnet);
    await lab.stop(h2);
  });

  test("a subnet.env that cannot be written is logged and keeps /readyz at 503; the agent keeps running", async () => {
    lab.putConfig(HOST_GW);
    const h = lab.addHost();
    h.subnetFile = "/proc/flannel-bin-test/subnet.env"; // /proc takes no new directories
    lab.start(h);
    expect(await until(() => lab.log(h).includes("could not write /proc/flannel-bin-test/subnet.env"), 15_000)).toBe(true);
    expect(lab.health(h, "/healthz")).toBe(200);
    await Bun.sleep(500);
    expect(lab.health(h, "/readyz")).toBe(503);
    expect(h.proc?.exitCode).toBeNull();
    expect(await lab.stop(h)).toBe(0);
  });

  test("config put --file, config get and FLANNELD_* store flags", async () => {
    const file = `${lab.dir}/net-conf.json`;
    await Bun.write(file, '{"network":"10.6.0.0/16","backend":{"type":"host-gw"}}');
    expect(lab.cli(["config", "put", "--file", file, ...lab.storeFlags()]).code).toBe(0);
    const r = Bun.spawnSync([BINARY, "config", "get"], { env: { ...process.env, FLANNELD_SQLITE_PATH: lab.db }, stdout: "pipe" });
    expect(r.stdout.toString()).toBe('{"network":"10.6.0.0/16","backend":{"type":"host-gw"}}\n');
  });

  test("bad flags and values are clear errors with a non-zero exit", () => {
    const r1 = lab.cli(["run", "--bogus"]);
    expect(r1.code).toBe(2);
    expect(r1.err).toContain("unknown flag --bogus");
    const r2 = lab.cli(["run", "--subnet-lease-renew-margin", "2000"]);
    expect(r2.code).toBe(2);
    expect(r2.err).toContain("subnet-lease-renew-margin");
    const r3 = lab.cli(["config", "put", '{"Network":"10.5.0.0/29"}', ...lab.storeFlags()]);
    expect(r3.code).toBe(2);
    expect(r3.err).toContain("network is too small. Minimum useful network prefix is /28");
    const r4 = lab.cli(["nonsense"]);
    expect(r4.code).toBe(2);
    // Reading commands never create a database at a mistyped path.
    const r6 = lab.cli(["leases", "--sqlite-path", `${lab.dir}/typo/flannel.db`]);
    expect(r6.code).toBe(1);
    expect(r6.err + r6.out).toContain(`no SQLite database at ${lab.dir}/typo/flannel.db`);
    expect(existsSync(`${lab.dir}/typo`)).toBe(false);
    // Store settings that can never work end the agent (instead of a retry every second forever).
    const r5 = lab.cli([
      "run",
      "--etcd-endpoints",
      "http://192.0.2.250:2379",
      "--etcd-certfile",
      "/nonexistent.pem",
      "--healthz-port",
      "0",
    ]);
    expect(r5.code).toBe(1);
    expect(r5.err + r5.out).toContain("cannot use the store");
    expect(r5.err + r5.out).toContain("--etcd-keyfile");
  });
});

describe("a network with room for 4 subnets", () => {
  const lab = new AgentLab();
  afterAll(() => lab.cleanup());

  test("the 5th host gets 'out of subnets', keeps retrying, and nothing else breaks; corrupt and reserved records are skipped", async () => {
    lab.putConfig('{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.6.0","Backend":{"Type":"host-gw"}}');
    // Of the six subnets, one is reserved for a host that is not here and one holds a corrupt record: four are left.
    const { SqliteStore } = await import("../stores/sqlite.ts");
    const s = SqliteStore.open(lab.db);
    await s.create(
      "subnets/10.5.3.0-24",
      new TextEncoder().encode('{"PublicIP":"198.51.100.7","PublicIPv6":null,"BackendType":"host-gw"}'),
    );
    await s.create("subnets/10.5.5.0-24", new TextEncoder().encode('{"PublicIP":"not an ip"}'), { ttlMs: 600_000 });
    await s.close();
    for (let i = 0; i < 5; i++) lab.addHost();
    for (const h of lab.hosts.slice(0, 4)) lab.start(h);
    expect(await until(() => lab.hosts.slice(0, 4).every((h) => lab.health(h, "/readyz") === 200), 30_000)).toBe(true);
    const fifth = lab.hosts[4]!;
    lab.start(fifth);
    expect(await until(() => lab.log(fifth).includes("out of subnets"), 15_000)).toBe(true);
    const subnets = lab.hosts.slice(0, 4).map((h) => lab.subnetOf(h));
    expect(new Set(subnets)).toEqual(new Set(["10.5.1.1/24", "10.5.2.1/24", "10.5.4.1/24", "10.5.6.1/24"]));
    expect(lab.log(lab.hosts[0]!)).toContain("skipping store record: subnets/10.5.5.0-24");
    await Bun.sleep(1500); // it retries every second; it must not exit or disturb the others
    expect(fifth.proc?.exitCode).toBeNull();
    expect(lab.subnetOf(fifth)).toBeNull();
    for (const h of lab.hosts.slice(0, 4)) expect(lab.health(h, "/readyz")).toBe(200);
    // The reservation is untouched and still has no expiry.
    const leases = JSON.parse(lab.cli(["leases", "--json", ...lab.storeFlags()]).out);
    expect(leases.find((l: { subnet: string }) => l.subnet === "10.5.3.0/24")).toMatchObject({
      publicIP: "198.51.100.7",
      reservation: true,
      expires: null,
    });
  });
});

describe("50 agents at once", () => {
  const lab = new AgentLab();
  afterAll(() => lab.cleanup());

  test("all get distinct subnets from one database file", async () => {
    lab.putConfig(HOST_GW);
    for (let i = 0; i < 50; i++) lab.addHost();
    for (const h of lab.hosts) lab.start(h);
    const done = await until(() => lab.hosts.every((h) => lab.subnetOf(h)), 120_000, 500);
    const missing = lab.hosts.filter((h) => !lab.subnetOf(h));
    expect(missing.map((h) => `${h.ns}: ${lab.log(h).slice(-500)}`)).toEqual([]);
    expect(done).toBe(true);
    const subnets = lab.hosts.map((h) => lab.subnetOf(h));
    expect(new Set(subnets).size).toBe(50);
    const leases = JSON.parse(lab.cli(["leases", "--json", ...lab.storeFlags()]).out);
    expect(leases.length).toBe(50);
    // Every agent programmed a host-gw route to each of its 49 peers, and SIGTERM leaves them in place.
    const ourRoutes = (ns: string) =>
      JSON.parse(Bun.spawnSync(["ip", "-n", ns, "-json", "route", "show", "proto", "159"], { stdout: "pipe" }).stdout.toString()).length;
    const first = lab.hosts[0]!.ns;
    expect(await until(() => ourRoutes(first) === 49, 30_000)).toBe(true);
    const codes = await Promise.all(lab.hosts.map((h) => lab.stop(h)));
    expect(codes.every((c) => c === 0)).toBe(true);
    expect(ourRoutes(first)).toBe(49);
  });
});
