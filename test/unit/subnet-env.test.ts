import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatCIDR, parseCIDR } from "../../src/ipmath.ts";
import { SUBNET_ENV_MAX_BYTES, formatSubnetEnv, readPreviousSubnet, writeSubnetEnv } from "../../src/subnet-env.ts";

const dir = mkdtempSync(join(tmpdir(), "fb-senv-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("subnet.env", () => {
  test("flannel's keys and order", () => {
    expect(formatSubnetEnv({ network: parseCIDR("10.5.0.0/16"), subnet: parseCIDR("10.5.72.0/24"), mtu: 1450, ipMasq: false })).toBe(
      "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    );
    expect(
      formatSubnetEnv({
        network: parseCIDR("10.5.0.0/16"),
        subnet: parseCIDR("10.5.72.0/24"),
        ipv6Network: parseCIDR("2001:cafe:42::/56"),
        ipv6Subnet: parseCIDR("2001:cafe:42::/64"),
        mtu: 1500,
        ipMasq: true,
      }),
    ).toBe(
      "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n",
    );
  });
  test("written atomically with mode 0644, parent created, read back", () => {
    const p = join(dir, "run/flannel/subnet.env");
    const old = process.umask(0o077);
    try {
      writeSubnetEnv(p, { network: parseCIDR("10.5.0.0/16"), subnet: parseCIDR("10.5.72.0/24"), mtu: 1450, ipMasq: false });
    } finally {
      process.umask(old);
    }
    expect(statSync(p).mode & 0o777).toBe(0o644);
    expect(readFileSync(p, "utf8")).toContain("FLANNEL_SUBNET=10.5.72.1/24");
    expect(formatCIDR(readPreviousSubnet(p).subnet!)).toBe("10.5.72.0/24");
  });
  test("missing file, missing key or a list means no previous subnet", () => {
    expect(readPreviousSubnet(join(dir, "nope")).subnet).toBeNull();
    const p = join(dir, "list.env");
    writeFileSync(p, "FLANNEL_SUBNET=10.5.1.1/24,10.5.2.1/24\n");
    expect(readPreviousSubnet(p).subnet).toBeNull();
    writeFileSync(p, "FLANNEL_MTU=1450\n");
    expect(readPreviousSubnet(p).subnet).toBeNull();
  });
});

describe("reading the previous subnet.env is bounded", () => {
  const capture = async (fn: () => unknown): Promise<{ result: unknown; logged: string[] }> => {
    const { consola } = await import("../../src/log.ts");
    const logged: string[] = [];
    const reporter = { log: (o: { args: unknown[] }) => void logged.push(o.args.join(" ")) };
    consola.addReporter(reporter);
    try {
      return { result: fn(), logged };
    } finally {
      consola.removeReporter(reporter);
    }
  };
  const none = { subnet: null, ipv6Subnet: null };

  test("a huge file (512 MB of newlines, sparse) is ignored with a warning, never read", async () => {
    const p = join(dir, "huge.env");
    writeFileSync(p, "FLANNEL_SUBNET=10.5.3.1/24\n");
    truncateSync(p, 512 * 1024 * 1024);
    const { result, logged } = await capture(() => readPreviousSubnet(p));
    expect(result).toEqual(none);
    expect(logged.some((m) => m.includes(p) && m.includes("536870912 bytes"))).toBe(true);
  });

  test("a file just over the limit is ignored; one at the limit is read", async () => {
    const p = join(dir, "limit.env");
    const line = "FLANNEL_SUBNET=10.5.3.1/24\n";
    writeFileSync(p, line + "#".repeat(SUBNET_ENV_MAX_BYTES - line.length));
    expect(formatCIDR(readPreviousSubnet(p).subnet!)).toBe("10.5.3.0/24");
    writeFileSync(p, line + "#".repeat(SUBNET_ENV_MAX_BYTES - line.length + 1));
    expect((await capture(() => readPreviousSubnet(p))).result).toEqual(none);
  });

  test("a FIFO is ignored at once (no writer needed, nothing blocks)", async () => {
    const p = join(dir, "fifo.env");
    const r = Bun.spawnSync(["mkfifo", p]);
    expect(r.exitCode).toBe(0);
    const { result, logged } = await capture(() => readPreviousSubnet(p));
    expect(result).toEqual(none);
    expect(logged.some((m) => m.includes("a FIFO"))).toBe(true);
  });

  test("a directory is ignored with a warning", async () => {
    const p = join(dir, "adir.env");
    mkdirSync(p);
    const { result, logged } = await capture(() => readPreviousSubnet(p));
    expect(result).toEqual(none);
    expect(logged.some((m) => m.includes("a directory"))).toBe(true);
  });

  test("a missing file is silent", async () => {
    const { result, logged } = await capture(() => readPreviousSubnet(join(dir, "missing.env")));
    expect(result).toEqual(none);
    expect(logged).toEqual([]);
  });

  test("a path with a newline is logged escaped", async () => {
    const p = join(dir, "evil\nFAKE line");
    mkdirSync(p);
    const { logged } = await capture(() => readPreviousSubnet(p));
    expect(logged.join("")).not.toContain("\n");
    expect(logged.join("")).toContain("evil\\nFAKE line");
  });
});
