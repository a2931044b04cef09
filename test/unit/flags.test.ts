import { describe, expect, test } from "bun:test";
import { FlagError, RUN_FLAGS, STORE_FLAGS, parseDuration, parseFlags } from "../../src/flags.ts";

describe("flags", () => {
  test("defaults", () => {
    const { values } = parseFlags([], RUN_FLAGS, {});
    expect(values.store).toBe("sqlite");
    expect(values["sqlite-path"]).toBe("/var/lib/flannel-bin/flannel.db");
    expect(values["etcd-prefix"]).toBe("/coreos.com/network");
    expect(values["nats-url"]).toBe("nats://127.0.0.1:4222");
    expect(values["nats-bucket"]).toBe("flannel");
    expect(values["subnet-file"]).toBe("/run/flannel/subnet.env");
    expect(values["healthz-ip"]).toBe("127.0.0.1");
    expect(values["healthz-port"]).toBe(8471);
    expect(values["subnet-lease-ttl"]).toBe(86_400_000);
    expect(values["subnet-lease-renew-margin"]).toBe(60);
  });
  test("Go-style spellings", () => {
    const { values } = parseFlags(
      ["-etcd-endpoints=http://a:1", "--etcd-prefix", "/kube-centos/network", "-ip-masq", "--store=etcd"],
      RUN_FLAGS,
      {},
    );
    expect(values["etcd-endpoints"]).toBe("http://a:1");
    expect(values["etcd-prefix"]).toBe("/kube-centos/network");
    expect(values["ip-masq"]).toBe(true);
    expect(values.store).toBe("etcd");
    expect(parseFlags(["--ip-masq=false"], RUN_FLAGS, {}).values["ip-masq"]).toBe(false);
  });
  test("FLANNELD_* environment, command line wins", () => {
    const env = { FLANNELD_ETCD_ENDPOINTS: "http://env:2379", FLANNELD_IFACE: "eth1", FLANNELD_IP_MASQ: "true", FLANNELD_STORE: "nats" };
    const { values } = parseFlags(["--store", "etcd"], RUN_FLAGS, env);
    expect(values["etcd-endpoints"]).toBe("http://env:2379");
    expect(values.iface).toEqual(["eth1"]);
    expect(values["ip-masq"]).toBe(true);
    expect(values.store).toBe("etcd");
  });
  test("repeatable --iface", () => {
    expect(parseFlags(["--iface", "eth0", "--iface=10.0.0.1"], RUN_FLAGS, {}).values.iface).toEqual(["eth0", "10.0.0.1"]);
  });
  test.each([
    [["--bogus"], /unknown flag --bogus/],
    [["--store", "redis"], /expected one of sqlite, etcd, nats/],
    [["--healthz-port", "x"], /whole number/],
    [["--healthz-port", "70000"], /at most 65535/],
    [["--subnet-lease-renew-margin", "0"], /subnet-lease-renew-margin.*at least 1/],
    [["--subnet-lease-renew-margin=1440"], /at most 1439/],
    [["--subnet-lease-ttl", "soon"], /duration/],
    [["--etcd-prefix"], /needs an argument/],
    [["--ip-masq=maybe"], /true or false/],
  ])("rejects %p", (argv, re) => {
    expect(() => parseFlags(argv, RUN_FLAGS, {})).toThrow(FlagError);
    expect(() => parseFlags(argv, RUN_FLAGS, {})).toThrow(re);
  });
  test("a bad FLANNELD_ value names the variable", () => {
    expect(() => parseFlags([], STORE_FLAGS, { FLANNELD_STORE: "mysql" })).toThrow(/FLANNELD_STORE/);
  });
  test("durations", () => {
    expect(parseDuration("24h")).toBe(86_400_000);
    expect(parseDuration("1h30m")).toBe(5_400_000);
    expect(parseDuration("30")).toBe(30_000);
    expect(parseDuration("500ms")).toBe(500);
    expect(parseDuration("1x")).toBeNull();
    expect(parseDuration("")).toBeNull();
  });
});

describe("store selection", () => {
  const store = (argv: string[], env: Record<string, string> = {}) => parseFlags(argv, RUN_FLAGS, env).values.store;
  test("flanneld's etcd flags alone mean etcd", () => {
    expect(store(["-etcd-endpoints=http://127.0.0.1:2379", "-etcd-prefix=/kube-centos/network"])).toBe("etcd");
    expect(store([], { FLANNELD_ETCD_ENDPOINTS: "http://127.0.0.1:2379" })).toBe("etcd");
  });
  test("NATS flags mean nats; nothing means sqlite; --store always wins", () => {
    expect(store(["--nats-url", "nats://127.0.0.1:4222"])).toBe("nats");
    expect(store([])).toBe("sqlite");
    expect(store(["--sqlite-path", "/tmp/x.db"])).toBe("sqlite");
    expect(store(["--store", "sqlite", "--etcd-prefix", "/x"])).toBe("sqlite");
    expect(store(["--etcd-prefix", "/x"], { FLANNELD_STORE: "nats" })).toBe("nats");
  });
});
