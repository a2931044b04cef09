// The Go-built test peers (flanneld, a current nats-server, the nats CLI) that scripts/setup.sh builds at pinned
// versions into one cache directory. A test that needs one fails with this message when it is missing: never a skip.
import { existsSync } from "node:fs";
import { join } from "node:path";

/** Where scripts/setup.sh installs them; FLANNEL_BIN_TEST_PEERS points elsewhere. */
export const PEER_BIN = process.env.FLANNEL_BIN_TEST_PEERS ?? "/var/cache/flannel-bin-test/bin";

export type Peer = "flannel" | "nats-server" | "nats";

/** Absolute path of a test peer; throws naming the path and the fix if it is not there. */
export function peerBinary(name: Peer): string {
  const p = join(PEER_BIN, name);
  if (!existsSync(p))
    throw new Error(
      `test peer ${name} not found at ${p}: run scripts/setup.sh as root (it builds it with Go; the first build takes minutes)`,
    );
  return p;
}
