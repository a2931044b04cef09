// Peer watch: a snapshot of every lease, then events, as Added/Removed for every peer but ourselves.
// A record that cannot be parsed is skipped with a warning; it never reads as "no peers" (flanneld's quirk, §2).

import type { NetworkConfig } from "./config.ts";
import { type Lease, subnetKey } from "./lease.ts";
import { usablePeerEvents } from "./lease-validity.ts";
import { leaseEquals, listLeases, parseLeaseRecord } from "./lease-protocol.ts";
import { type Store, SUBNETS_PREFIX } from "./store.ts";

export type PeerEvent =
  | { type: "added"; key: string; lease: Lease }
  | { type: "removed"; key: string; lease: Lease }
  /** The initial snapshot (or a re-list) is complete: the known set now matches the store. */
  | { type: "synced"; peers: number }
  /** Our own record changed or vanished (expired, deleted by hand): the agent decides what to do. */
  | { type: "own"; lease: Lease | null };

/** With `usable`, only records that pass the lease validity rules (src/lease-validity.ts) become peers. */
export async function* watchPeers(
  store: Store,
  ownKey: () => string,
  signal: AbortSignal,
  usable?: { config: NetworkConfig; own: () => Lease | null },
): AsyncGenerator<PeerEvent> {
  if (usable) return yield* usablePeerEvents(watchPeers(store, ownKey, signal), usable.config, usable.own);
  const known = new Map<string, Lease>();

  // Diffs a full list against what we know: Added for new or changed peers, Removed for vanished ones.
  async function* resync(): AsyncGenerator<PeerEvent, number> {
    const snap = await listLeases(store);
    const seen = new Set<string>();
    const corruptKeys = new Set(snap.corrupt.map((n) => n.ip)); // keep peers whose record turned corrupt
    for (const lease of snap.leases) {
      const key = keyOf(lease);
      if (key === ownKey()) continue;
      seen.add(key);
      const old = known.get(key);
      if (!old || !leaseEquals(old, lease)) {
        known.set(key, lease);
        yield { type: "added", key, lease };
      } else known.set(key, lease);
    }
    for (const [key, lease] of known) {
      if (seen.has(key) || corruptKeys.has(lease.subnet.ip)) continue;
      known.delete(key);
      yield { type: "removed", key, lease };
    }
    yield { type: "synced", peers: known.size };
    return snap.revision;
  }

  let revision = yield* resync();
  while (!signal.aborted) {
    for await (const ev of store.watch(SUBNETS_PREFIX, revision, signal)) {
      if (ev.type === "relist") {
        revision = yield* resync();
        continue;
      }
      if (ev.type === "delete") {
        if (ev.key === ownKey()) {
          yield { type: "own", lease: null };
          continue;
        }
        const old = known.get(ev.key);
        if (old) {
          known.delete(ev.key);
          yield { type: "removed", key: ev.key, lease: old };
        }
        continue;
      }
      const lease = parseLeaseRecord(ev.kv);
      if (ev.kv.key === ownKey()) {
        if (lease) yield { type: "own", lease }; // a corrupt own record is repaired by the next renewal
        continue;
      }
      if (!lease) continue; // logged by parseLeaseRecord; the peer keeps its last good state
      const old = known.get(ev.kv.key);
      known.set(ev.kv.key, lease);
      if (!old || !leaseEquals(old, lease)) yield { type: "added", key: ev.kv.key, lease };
    }
    // The store's watch only ends on abort; if it ever ends otherwise, re-list and go on.
    if (!signal.aborted) revision = yield* resync();
  }
}

const keyOf = (l: Lease): string => subnetKey(l.subnet, l.ipv6Subnet);
