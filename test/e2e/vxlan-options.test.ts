// vxlan Backend options end to end: VNI and Port reach the kernel (device flannel.<VNI>, dstport) and traffic
// crosses; DirectRouting puts plain routes to peers on the same L2 segment and no vxlan entries for them.
import { afterAll, describe, expect, test } from "bun:test";
import { labDown, labUp } from "../../src/lab/lab.ts";
import { ip } from "../../src/lab/netns.ts";
import { ensureBinary, fdb, host, labState, peerInfo, routes, testName } from "./helpers.ts";

const TEST_TIMEOUT_MS = 120_000;
const VNI = { name: testName("e2vo") };
const DIRECT = { name: testName("e2vd") };

afterAll(async () => {
  for (const lab of [VNI, DIRECT]) {
    const r = await labDown(lab);
    if (r.errors.length) console.error(r.errors);
  }
}, 60_000);

describe("vxlan options", () => {
  test(
    "VNI 7 on UDP port 4789: device flannel.7 with that port, lease BackendData VNI 7, containers ping",
    async () => {
      const binary = await ensureBinary();
      await labDown(VNI);
      const report = await labUp({ ...VNI, hosts: 2, backend: "vxlan", binary, backendOptions: { VNI: 7, Port: 4789 } });
      expect(report.pairs.filter((p) => !p.ok)).toEqual([]);
      const h1 = host(VNI, 1);
      const link = JSON.parse((await ip(["-json", "-d", "link", "show", "flannel.7"], h1.netns)).stdout)[0];
      expect(link.linkinfo.info_data.id).toBe(7);
      expect(link.linkinfo.info_data.port).toBe(4789);
      expect(link.mtu).toBe(1450);
      const peer = await peerInfo(host(VNI, 2));
      const r = (await routes(h1.netns)).find((x) => x.dst === peer.subnet);
      expect(r?.dev).toBe("flannel.7");
      const leases = JSON.parse(
        Bun.spawnSync([binary, "leases", "--json", ...labState(VNI).storeFlags], { stdout: "pipe" }).stdout.toString(),
      );
      expect(leases.map((l: { backendData: { VNI: number } }) => l.backendData.VNI)).toEqual([7, 7]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "DirectRouting: peers on the same segment get a plain route via their public IP and no fdb entry",
    async () => {
      const binary = await ensureBinary();
      await labDown(DIRECT);
      const report = await labUp({ ...DIRECT, hosts: 2, backend: "vxlan", binary, backendOptions: { DirectRouting: true } });
      expect(report.pairs.filter((p) => !p.ok)).toEqual([]);
      const h1 = host(DIRECT, 1);
      const peer = await peerInfo(host(DIRECT, 2));
      const r = (await routes(h1.netns)).find((x) => x.dst === peer.subnet);
      expect(r?.gateway).toBe(peer.publicIP);
      expect(r?.dev).toBe("eth0");
      expect((await fdb(h1.netns)).some((f) => f.dst === peer.publicIP)).toBe(false);
    },
    TEST_TIMEOUT_MS,
  );
});
