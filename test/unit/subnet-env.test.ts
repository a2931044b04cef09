import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatCIDR, parseCIDR } from "../../src/ipmath.ts";
import { formatSubnetEnv, readPreviousSubnet, writeSubnetEnv } from "../../src/subnet-env.ts";

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
