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
  test("run as flanneld: no store flags mean etcd (flanneld's default), --sqlite-path still means sqlite", () => {
    const asFlanneld = (argv: string[]) => parseFlags(argv, RUN_FLAGS, {}, { storeFallback: "etcd" }).values.store;
    expect(asFlanneld([])).toBe("etcd");
    expect(asFlanneld(["--sqlite-path", "/tmp/x.db"])).toBe("sqlite");
    expect(asFlanneld(["--nats-url", "nats://127.0.0.1:4222"])).toBe("nats");
  });
});

describe("flanneld's flag lines", () => {
  test("klog/glog flags are accepted with their defaults and values", () => {
    const { values } = parseFlags([], RUN_FLAGS, {});
    expect(values.v).toBe(0);
    expect(values.logtostderr).toBe(true);
    expect(values.alsologtostderr).toBe(false);
    expect(values.stderrthreshold).toBe("2");
    const g = parseFlags(
      [
        "--logtostderr=false",
        "--log_dir=/var/log/k8s/flannel/",
        "-v=2",
        "-vmodule=foo=3",
        "-log_backtrace_at=x.go:1",
        "--stderrthreshold=warning",
      ],
      RUN_FLAGS,
      {},
    ).values;
    expect(g.logtostderr).toBe(false);
    expect(g.log_dir).toBe("/var/log/k8s/flannel/");
    expect(g.v).toBe(2);
    expect(g.vmodule).toBe("foo=3");
    expect(g.stderrthreshold).toBe("WARNING");
    expect(parseFlags(["-iface-can-reach=10.0.0.1"], RUN_FLAGS, {}).values["iface-can-reach"]).toBe("10.0.0.1");
  });
  test("flanneld flags not implemented yet are known, and using one says so (also from the environment)", () => {
    expect(() => parseFlags(["--public-ipv6=fd00::1"], RUN_FLAGS, {})).toThrow(
      /--public-ipv6 is a flanneld flag that flannel-bin does not support yet/,
    );
    expect(() => parseFlags(["--kube-subnet-mgr"], RUN_FLAGS, {})).toThrow(/not support yet/);
    expect(() => parseFlags([], RUN_FLAGS, { FLANNELD_KUBE_SUBNET_MGR: "true" })).toThrow(/FLANNELD_KUBE_SUBNET_MGR is a flanneld flag/);
  });
  test("errors name the flag and the accepted values", () => {
    expect(() => parseFlags(["--v=x"], RUN_FLAGS, {})).toThrow('invalid value "x" for flag --v: expected a whole number from 0 to 10');
    expect(() => parseFlags(["--stderrthreshold=LOUD"], RUN_FLAGS, {})).toThrow(/expected one of 0, 1, 2, 3, INFO, WARNING, ERROR, FATAL/);
    expect(() => parseFlags(["--healthz-port"], RUN_FLAGS, {})).toThrow(
      "flag needs an argument: --healthz-port (a whole number from 0 to 65535)",
    );
  });
  test("values are typed by the spec", () => {
    const { values } = parseFlags(["--healthz-port=9000", "--iface=eth0"], RUN_FLAGS, {});
    const port: number = values["healthz-port"];
    const iface: string[] | undefined = values.iface;
    const store: "sqlite" | "etcd" | "nats" = values.store;
    expect([port, iface, store]).toEqual([9000, ["eth0"], "sqlite"]);
  });
});
