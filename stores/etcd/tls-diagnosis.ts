// Why a TLS handshake with an etcd endpoint failed, in words an operator can act on. Bun's fetch reports every
// handshake failure as EPROTO "Does the server speak TLS on this port?", also when the server is fine and only
// wants a client certificate (etcd --client-cert-auth) that was not given (and a plain port answers ECONNRESET). One node:tls handshake (bounded, only
// after such a failure) reads the server's TLS alert and tells the cases apart.
import { connect } from "node:tls";

export interface TlsFiles {
  ca?: string;
  cert?: string;
  key?: string;
}

const cache = new Map<string, string>();

/** A better message for a fetch error on `endpoint`, or null to keep the original. */
export async function diagnoseTlsFailure(
  endpoint: string,
  err: unknown,
  tls: TlsFiles | undefined,
  timeoutMs = 3000,
): Promise<string | null> {
  const code = (err as { code?: unknown })?.code;
  if ((code !== "EPROTO" && code !== "ECONNRESET") || !endpoint.startsWith("https:")) return null;
  const key = `${endpoint}\n${tls?.cert ? "cert" : "nocert"}`;
  const known = cache.get(key);
  if (known !== undefined) return known;
  const alert = await handshakeAlert(new URL(endpoint), tls, timeoutMs);
  let msg: string | null = null;
  if (/CERTIFICATE_REQUIRED|BAD_CERTIFICATE|HANDSHAKE_FAILURE/i.test(alert))
    msg = tls?.cert
      ? `TLS handshake failed: the server refused our client certificate (${alert}); check --etcd-certfile and --etcd-keyfile`
      : "TLS handshake failed: the server requires a client certificate and none was given (set --etcd-certfile and --etcd-keyfile)";
  else if (/WRONG_VERSION_NUMBER|PACKET_LENGTH_TOO_LONG|unknown protocol/i.test(alert))
    msg = "TLS handshake failed: the server does not speak TLS on this port (use an http:// endpoint, or the TLS port)";
  else if (/before secure TLS connection/i.test(alert))
    msg =
      "the server closed the connection at the TLS handshake: it probably does not speak TLS on this port (use an http:// endpoint, or the TLS port)";
  if (msg) cache.set(key, msg);
  return msg;
}

/** The error text of a TLS handshake plus one request (a TLS 1.3 server sends its alert after the handshake). */
function handshakeAlert(u: URL, tls: TlsFiles | undefined, timeoutMs: number): Promise<string> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (s: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(s);
    };
    const sock = connect({
      host: u.hostname.replace(/^\[|\]$/g, ""),
      port: Number(u.port || 443),
      ca: tls?.ca,
      cert: tls?.cert,
      key: tls?.key,
      servername: /^[\d.]+$|:/.test(u.hostname) ? undefined : u.hostname,
    });
    const timer = setTimeout(() => finish(""), timeoutMs);
    // A plain-HTTP server may also just reset or close the connection at our ClientHello (ECONNRESET, no TLS error
    // text): that is told by the handshake never having finished.
    let secured = false;
    const early = () => (secured ? "" : " (closed before secure TLS connection)");
    sock.on("secureConnect", () => {
      secured = true;
      sock.write(`GET /health HTTP/1.1\r\nHost: ${u.host}\r\nConnection: close\r\n\r\n`);
    });
    sock.on("data", () => finish(""));
    sock.on("error", (e) => {
      const code = (e as { code?: string }).code ?? "";
      finish(`${code} ${e.message}${code === "ECONNRESET" || code === "EPIPE" ? early() : ""}`);
    });
    sock.on("close", () => finish(secured ? "" : early()));
  });
}
