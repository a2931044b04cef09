// Throw-away TLS material for tests: a CA, a server certificate for 127.0.0.1 and a client certificate, made with
// the openssl CLI in a fresh temp dir. No bun:test imports here. The caller removes the dir with remove().

import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface TestCerts {
  /** The temp dir holding every file below. */
  dir: string;
  /** CA certificate (PEM) that signed both certificates below. */
  caFile: string;
  /** Server certificate, subjectAltName IP:127.0.0.1 (and any extra IPs asked for), serverAuth + clientAuth. */
  serverCertFile: string;
  serverKeyFile: string;
  /** Client certificate (CN=client), clientAuth. */
  clientCertFile: string;
  clientKeyFile: string;
  /** Deletes the temp dir. */
  remove(): Promise<void>;
}

const OPENSSL_TIMEOUT_MS = 30_000;

async function openssl(dir: string, args: string[]): Promise<void> {
  const p = Bun.spawn(["openssl", ...args], { stdout: "ignore", stderr: "pipe", cwd: dir, timeout: OPENSSL_TIMEOUT_MS });
  const [err, code] = await Promise.all([new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`openssl ${args.join(" ")} failed (exit ${code}${p.signalCode ? `, ${p.signalCode}` : ""}): ${err}`);
}

/** Makes a CA, a server cert for 127.0.0.1 (plus `serverIps`) and a client cert, all valid for one day. */
export async function makeTestCerts(opts: { prefix?: string; serverIps?: string[] } = {}): Promise<TestCerts> {
  const dir = await mkdtemp(join(tmpdir(), opts.prefix ?? "flannel-certs-"));
  const f = (name: string) => join(dir, name);
  const remove = () => rm(dir, { recursive: true, force: true });
  try {
    const ips = ["127.0.0.1", ...(opts.serverIps ?? [])];
    await openssl(dir, [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "1",
      "-subj",
      "/CN=test-ca",
      "-keyout",
      f("ca.key"),
      "-out",
      f("ca.pem"),
    ]);
    await writeFile(f("server.ext"), `subjectAltName=${ips.map((ip) => `IP:${ip}`).join(",")}\nextendedKeyUsage=serverAuth,clientAuth\n`);
    await writeFile(f("client.ext"), "extendedKeyUsage=clientAuth\n");
    for (const who of ["server", "client"]) {
      await openssl(dir, [
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        `/CN=${who}`,
        "-keyout",
        f(`${who}.key`),
        "-out",
        f(`${who}.csr`),
      ]);
      await openssl(dir, [
        "x509",
        "-req",
        "-in",
        f(`${who}.csr`),
        "-CA",
        f("ca.pem"),
        "-CAkey",
        f("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        f(`${who}.ext`),
        "-out",
        f(`${who}.pem`),
      ]);
    }
  } catch (e) {
    await remove();
    throw e;
  }
  return {
    dir,
    caFile: f("ca.pem"),
    serverCertFile: f("server.pem"),
    serverKeyFile: f("server.key"),
    clientCertFile: f("client.pem"),
    clientKeyFile: f("client.key"),
    remove,
  };
}
