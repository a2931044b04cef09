// flannel's mk-docker-opts.sh, byte for byte (docs/flannel-compat.md §4).
import { expect, test } from "bun:test";
import { dockerOptsText, parseArgs, routeConflict, usage } from "../../src/mk-docker-opts.ts";

const ENV = { FLANNEL_NETWORK: "10.5.0.0/16", FLANNEL_SUBNET: "10.5.72.1/24", FLANNEL_MTU: "1450", FLANNEL_IPMASQ: "true" };
const text = (argv: string[], vars: Record<string, string> = ENV) => {
  const o = parseArgs(argv);
  if ("usage" in o) throw new Error(o.usage);
  const r = dockerOptsText(o, vars);
  if ("error" in r) throw new Error(r.error);
  return r.text;
};

test("defaults: individual and combined; IPMASQ true gives --ip-masq=false", () => {
  expect(text([])).toBe(
    'DOCKER_OPT_BIP="--bip=10.5.72.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=false"\nDOCKER_OPT_MTU="--mtu=1450"\nDOCKER_OPTS=" --bip=10.5.72.1/24 --ip-masq=false --mtu=1450"\n',
  );
});

test("IPMASQ false gives --ip-masq=true; an invalid value is the script's error", () => {
  expect(text(["-c"], { ...ENV, FLANNEL_IPMASQ: "false" })).toBe('DOCKER_OPTS=" --bip=10.5.72.1/24 --ip-masq=true --mtu=1450"\n');
  const o = parseArgs([]);
  expect(!("usage" in o) && dockerOptsText(o, { ...ENV, FLANNEL_IPMASQ: "maybe" })).toEqual({
    error: "Invalid value of FLANNEL_IPMASQ: maybe",
  });
});

test("each option: -i, -c, -m, -k, -f, -d (clustered and attached too)", () => {
  expect(text(["-i"])).toBe('DOCKER_OPT_BIP="--bip=10.5.72.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=false"\nDOCKER_OPT_MTU="--mtu=1450"\n');
  expect(text(["-c", "-m"])).toBe('DOCKER_OPTS=" --bip=10.5.72.1/24 --mtu=1450"\n');
  expect(text(["-cm"])).toBe('DOCKER_OPTS=" --bip=10.5.72.1/24 --mtu=1450"\n');
  expect(text(["-k", "DOCKER_NETWORK_OPTIONS", "-c"])).toBe('DOCKER_NETWORK_OPTIONS=" --bip=10.5.72.1/24 --ip-masq=false --mtu=1450"\n');
  expect(text(["-kDOCKER_NETWORK_OPTIONS", "-c"])).toBe('DOCKER_NETWORK_OPTIONS=" --bip=10.5.72.1/24 --ip-masq=false --mtu=1450"\n');
  const o = parseArgs(["-f", "/x/subnet.env", "-d", "/run/flannel/docker", "-ic"]);
  expect(o).toEqual({
    flannelEnv: "/x/subnet.env",
    dockerEnv: "/run/flannel/docker",
    combinedKey: "DOCKER_OPTS",
    indiv: true,
    combined: true,
    ipMasq: true,
  });
  expect(parseArgs([])).toMatchObject({ flannelEnv: "/run/flannel/subnet.env", dockerEnv: "/run/docker_opts.env" });
});

test("an existing value of the key comes first, then a space; no subnet.env values: an empty combined value", () => {
  expect(text(["-c"], { ...ENV, DOCKER_OPTS: "-H unix:///x" })).toBe(
    'DOCKER_OPTS="-H unix:///x  --bip=10.5.72.1/24 --ip-masq=false --mtu=1450"\n',
  );
  expect(text([], {})).toBe('DOCKER_OPTS=""\n');
  expect(text([], { FLANNEL_SUBNET: "10.5.72.1/24" })).toBe('DOCKER_OPT_BIP="--bip=10.5.72.1/24"\nDOCKER_OPTS=" --bip=10.5.72.1/24"\n');
});

test("-h, -? and unknown options: the script's usage", () => {
  expect(parseArgs(["-h"])).toEqual({ usage: "" });
  expect(parseArgs(["-?"])).toEqual({ usage: "" });
  expect(parseArgs(["-x"])).toEqual({ usage: "illegal option -- x" });
  expect(parseArgs(["-k"])).toEqual({ usage: "option requires an argument -- k" });
  expect(usage("/usr/libexec/flannel/mk-docker-opts.sh")).toBe(
    "/usr/libexec/flannel/mk-docker-opts.sh [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]\n\nGenerate Docker daemon options based on flannel env file\nOPTIONS:\n\t-f\tPath to flannel env file. Defaults to /run/flannel/subnet.env\n\t-d\tPath to Docker env file to write to. Defaults to /run/docker_opts.env\n\t-i\tOutput each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500\n\t-c\tOutput combined Docker options into DOCKER_OPTS var\n\t-k\tSet the combined options key to this value (default DOCKER_OPTS=)\n\t-m\tDo not output --ip-masq (useful for older Docker version)\n\n",
  );
});

test("route check: the subnet already routed via a gateway", () => {
  const routes =
    "default via 192.0.2.1 dev eth0\n10.5.72.0/24 via 192.0.2.9 dev eth0\n10.5.73.0/24 dev cni0 proto kernel scope link src 10.5.73.1\n";
  expect(routeConflict("10.5.72.1/24", routes)).toBe("10.5.72.0/24 via 192.0.2.9 dev eth0");
  expect(routeConflict("10.5.73.1/24", routes)).toBeNull(); // connected, no "via"
  expect(routeConflict("garbage", routes)).toBeNull();
});
