// The free-subnet walk of the lease protocol: correct against a brute-force check, one pass over the sorted leases,
// and a uniform pick over every free subnet.
import { describe, expect, test } from "bun:test";
import type { NetworkConfig } from "../../src/config.ts";
import { type IPNet, formatCIDR, overlaps, parseCIDR } from "../../src/ipmath.ts";
import { PARSE_SLICE, type WalkStats, freeRanges, listLeases, pickFree } from "../../src/lease-protocol.ts";
import type { Store } from "../../src/store.ts";
import { cfg } from "./net-config.ts";

const expand = (c: NetworkConfig, taken: IPNet[]) => {
  const step = 1n << BigInt(32 - c.subnetLen);
  const out: string[] = [];
  for (const r of freeRanges(c, taken))
    for (let k = 0n; k < r.count; k++) out.push(formatCIDR({ family: 4, ip: r.first + k * step, prefix: c.subnetLen }));
  return out;
};
const bruteForce = (c: NetworkConfig, taken: IPNet[]) => {
  const step = 1n << BigInt(32 - c.subnetLen);
  const out: string[] = [];
  for (let ip = c.subnetMin; ip <= c.subnetMax; ip += step) {
    const cand: IPNet = { family: 4, ip, prefix: c.subnetLen };
    if (!taken.some((t) => overlaps(t, cand))) out.push(formatCIDR(cand));
  }
  return out;
};

/** A small deterministic generator, so a failure is reproducible. */
function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

describe("free-subnet walk", () => {
  test("matches a brute-force overlap check: larger and smaller taken nets, ones outside the range, IPv6, duplicates", () => {
    const c = cfg("10.5.0.0/20", 24); // 10.5.1.0 .. 10.5.15.0
    const r = rng(7);
    for (let round = 0; round < 300; round++) {
      const taken: IPNet[] = [];
      const k = Math.floor(r() * 8);
      for (let i = 0; i < k; i++) {
        const prefix = 20 + Math.floor(r() * 10); // /20 .. /29
        const ip = 0x0a04f000 + Math.floor(r() * 0x3000); // around and inside 10.5.0.0/20
        const size = 2 ** (32 - prefix);
        taken.push({ family: 4, ip: BigInt(Math.floor(ip / size) * size), prefix });
      }
      if (r() < 0.3 && taken.length) taken.push(taken[0]!);
      if (r() < 0.3) taken.push(parseCIDR("fd00::/64"));
      expect(expand(c, taken)).toEqual(bruteForce(c, taken));
    }
  });

  test("with 10,000 leases present the walk is one pass over the sorted leases (comparisons counted, not time)", () => {
    const c = cfg("10.0.0.0/8", 24); // 65,535 candidates
    const r = rng(11);
    const taken: IPNet[] = [];
    const used = new Set<number>();
    while (taken.length < 10_000) {
      const k = 1 + Math.floor(r() * 65_535);
      if (used.has(k)) continue;
      used.add(k);
      taken.push({ family: 4, ip: BigInt(0x0a000000 + k * 256), prefix: 24 });
    }
    const stats: WalkStats = { comparisons: 0 };
    const ranges = freeRanges(c, taken, stats);
    let free = 0n;
    for (const x of ranges) free += x.count;
    expect(free).toBe(65_535n - 10_000n);
    // Sorting is N log2 N comparisons at most (~133k for 10k), the walk N more. The old walk tested every candidate
    // against every lease: ~55,000 x 10,000.
    const n = taken.length;
    expect(stats.comparisons).toBeLessThanOrEqual(Math.ceil(n * Math.log2(n)) + n);
  });

  test("the pick is spread over every free subnet, not the first 100", () => {
    const c = cfg("10.5.0.0/16", 24); // 255 candidates
    const taken = [parseCIDR("10.5.1.0/24"), parseCIDR("10.5.64.0/18")];
    const ranges = freeRanges(c, taken);
    expect(ranges.map((x) => [formatCIDR({ family: 4, ip: x.first, prefix: 24 }), x.count])).toEqual([
      ["10.5.2.0/24", 62n],
      ["10.5.128.0/24", 128n],
    ]);
    const seen = new Set<string>();
    const r = rng(3);
    for (let i = 0; i < 5000; i++) seen.add(formatCIDR(pickFree(c, ranges, r)!));
    expect(seen.size).toBe(190);
    expect(seen.has("10.5.1.0/24") || seen.has("10.5.64.0/24")).toBe(false);
    // Ends of the random range land on the first and last free subnet.
    expect(formatCIDR(pickFree(c, ranges, () => 0)!)).toBe("10.5.2.0/24");
    expect(formatCIDR(pickFree(c, ranges, () => 0.9999999999)!)).toBe("10.5.255.0/24");
    expect(pickFree(c, [], () => 0.5)).toBeNull();
  });
});

describe("listing leases", () => {
  test("10,000 records are decoded in slices: a timer set before the list runs before it returns", async () => {
    const enc = new TextEncoder();
    const items = Array.from({ length: 10_000 }, (_, i) => ({
      key: `subnets/10.${1 + (i >> 8)}.${i & 255}.0-24`,
      value: enc.encode(`{"PublicIP":"172.16.${(i + 1) >> 8}.${(i + 1) & 255}","PublicIPv6":null,"BackendType":"host-gw"}`),
      revision: i + 1,
      createRevision: i + 1,
      expiresAt: null,
    }));
    const store = { list: async () => ({ items, revision: 10_000 }) } as unknown as Store;
    let ticked = false;
    setTimeout(() => (ticked = true), 0);
    let tickedBeforeDone = false;
    const snap = await listLeases(store).then((s) => ((tickedBeforeDone = ticked), s));
    expect(snap.leases).toHaveLength(10_000);
    expect(PARSE_SLICE).toBeLessThan(10_000);
    expect(tickedBeforeDone).toBe(true);
  });
});
