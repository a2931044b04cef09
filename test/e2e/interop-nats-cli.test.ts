// The nats CLI (v0.5.0, built by scripts/setup.sh) as a real client of the bucket a NATS lab uses, on the current
// nats-server (v2.15.2, also from setup.sh): what `nats kv ls` and `nats kv get` show is what the README says: one key
// per lease in the documented key scheme, next to `config`, each value a CBOR record whose `v` is flannel's lease JSON
// and whose `o` names the writer.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { hostname } from "node:os";
// The pure-JS decoder: the package root loads the cbor-extract addon, which misreads records under Bun (see
// stores/record-envelope.ts). A decoder of its own, so the test reads the bytes independently of the store.
import { Decoder } from "cbor-x/decode-no-eval";
import { labDown, labUp } from "../../src/lab/lab.ts";
import { execIn } from "../../src/lab/netns.ts";
import { peerBinary } from "../helpers/peers.ts";
import { ensureBinary, labState, peerInfo, testName } from "./helpers.ts";

const LAB = { name: testName("e2ncli") };
const cbor = new Decoder({ useRecords: false, mapsAsObjects: true });

beforeAll(async () => {
  await labDown(LAB);
  const report = await labUp({
    ...LAB,
    hosts: 2,
    backend: "vxlan",
    store: "nats",
    natsServer: peerBinary("nats-server"),
    binary: await ensureBinary(),
  });
  if (!report.ok) throw new Error(`nats lab not reachable: ${JSON.stringify(report.pairs.filter((p) => !p.ok))}`);
}, 120_000);
afterAll(async () => {
  await labDown(LAB);
}, 60_000);

/** `nats --server <lab's url> <args>` run inside the underlay namespace (bounded). */
function natsArgv(args: string[]): string[] {
  const s = labState(LAB);
  const url = s.storeFlags[s.storeFlags.indexOf("--nats-url") + 1]!;
  return ["ip", "netns", "exec", s.underlay, peerBinary("nats"), "--server", url, ...args];
}

function natsRaw(args: string[]): Buffer {
  const r = Bun.spawnSync(natsArgv(args), { stdout: "pipe", stderr: "pipe", timeout: 20_000 });
  if (r.exitCode !== 0) throw new Error(`nats ${args.join(" ")} failed (exit ${r.exitCode}): ${r.stderr.toString()}`);
  return r.stdout;
}

const nats = (args: string[]) => natsRaw(args).toString("utf8");

/** The README's key scheme: subnets/10.5.52.0-24 -> subnets.10_5_52_0-24. */
const natsKey = (subnet: string) => `subnets.${subnet.replace("/", "-").replaceAll(".", "_")}`;

describe("the nats CLI on the lab's bucket (current nats-server)", () => {
  test("the server under the lab is the pinned current one", async () => {
    const s = labState(LAB);
    expect(s.servers[0]?.natsServer).toBe(peerBinary("nats-server"));
    const v = await execIn(s.underlay, [peerBinary("nats-server"), "--version"]);
    expect(v.stdout).toContain("v2.15.2");
  });

  test("`nats kv ls` lists the bucket; `nats kv ls flannel` lists config and one key per lease", async () => {
    expect(nats(["kv", "ls", "--names"]).split("\n")).toContain("flannel");
    const keys = nats(["kv", "ls", "flannel"])
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "")
      .sort();
    const hosts = labState(LAB).hosts;
    const want = ["config", ...(await Promise.all(hosts.map(async (h) => natsKey((await peerInfo(h)).subnet))))].sort();
    expect(keys).toEqual(want);
  });

  test("`nats kv get flannel <key> --raw` is a CBOR record: v = flannel's lease JSON, o = the writing host", async () => {
    for (const h of labState(LAB).hosts) {
      const info = await peerInfo(h);
      const rec = cbor.decode(natsRaw(["kv", "get", "flannel", natsKey(info.subnet), "--raw"])) as { v: Uint8Array; o?: string };
      expect(Buffer.from(rec.v).toString("utf8")).toBe(
        `{"PublicIP":"${h.publicIP}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"${info.vtepMac}"}}`,
      );
      expect(rec.o).toBe(hostname());
    }
  });
});
