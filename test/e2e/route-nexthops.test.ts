// --route-nexthops off: peer routes exactly as flanneld writes them (no nexthop object), still repaired by the kernel
// monitor; the default (auto) goes through nexthops on this kernel. Two-host vxlan labs on the SQLite store.
import { beforeAll, describe, expect, test } from "bun:test";
import { pingFrom } from "../../src/lab/lab.ts";
import { ip } from "../../src/lab/netns.ts";
import { host, type PeerInfo, peerInfo, routes, testName, twoHostLab, waitUntil } from "./helpers.ts";

const TEST_TIMEOUT_MS = 60_000;

for (const mode of ["off", "auto"] as const) {
  describe(`--route-nexthops ${mode}`, () => {
    const LAB = { name: testName(mode === "off" ? "e2nho" : "e2nha") };
    let peer: PeerInfo;
    twoHostLab(LAB, "vxlan", mode === "off" ? ["--route-nexthops", "off", "--reconcile-interval", "1h"] : ["--reconcile-interval", "1h"]);
    beforeAll(async () => {
      peer = await peerInfo(host(LAB, 2));
    });

    test(
      mode === "off"
        ? "the peer route is a plain gateway route, and no nexthop of ours exists"
        : "the peer route goes through a nexthop of ours",
      async () => {
        const h1 = host(LAB, 1);
        const r = (await routes(h1.netns)).find((x) => x.dst === peer.subnet);
        expect(r).toBeDefined();
        expect(r!.gateway).toBe(peer.subnetIP);
        expect(r!.dev).toBe("flannel.1");
        expect(r!.flags ?? []).toContain("onlink");
        const nhs = JSON.parse((await ip(["-j", "nexthop", "show", "proto", "159"], h1.netns)).stdout || "[]") as unknown[];
        if (mode === "off") {
          expect(r!.nhid).toBeUndefined();
          expect(nhs).toEqual([]);
        } else {
          expect(typeof r!.nhid).toBe("number");
          expect(nhs.length).toBe(1);
        }
        expect((await pingFrom(h1.containerNetns!, host(LAB, 2).containerIP!)).ok).toBe(true);
      },
      TEST_TIMEOUT_MS,
    );

    if (mode === "off")
      test(
        "a plain route deleted by hand is put back by the monitor (no full reconcile: the interval is 1 h)",
        async () => {
          const h1 = host(LAB, 1);
          await ip(["route", "del", peer.subnet], h1.netns);
          await waitUntil(
            `${h1.netns}: the route to ${peer.subnet} is back`,
            2_000,
            async () => (await routes(h1.netns)).some((x) => x.dst === peer.subnet && x.nhid === undefined),
            50,
          );
        },
        TEST_TIMEOUT_MS,
      );
  });
}
