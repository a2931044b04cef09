// The peer event loop (flannel's backend Run): peer lease events from the store watch become desired kernel state.
// A peer whose state cannot be used is ignored (logged once) and what we had programmed for it removed. The first
// "synced" event runs one full reconcile (which also removes what we own for peers that left while we were down)
// and reports start-up as done. Knows nothing of processes or the kernel: unit-tested with a fake reconciler.
import type { Backend } from "../../backends/backend.ts";
import { formatCIDR } from "../ipmath.ts";
import type { ReconcileCounts } from "../kernel/reconciler.ts";
import type { StateFragment } from "../kernel/types.ts";
import type { Lease } from "../lease.ts";
import { LogLevels } from "consola/core";
import { logger } from "../log.ts";
import type { PeerEvent } from "../peer-watch.ts";

const log = logger("agent");

/** What the loop needs of the reconciler. */
export interface PeerTarget {
  set(id: string, fragment: StateFragment): void;
  /** Whether `id` desires anything now. */
  has(id: string): boolean;
  delete(id: string): void;
  fullReconcile(): Promise<ReconcileCounts>;
  start(): void;
}

export interface PeerLoopDeps {
  backend: Pick<Backend, "peerState">;
  target: PeerTarget;
  /** Our own record changed or vanished: the lease keeper decides. */
  onOwn(lease: Lease | null): void;
  /** The first sync is programmed: counts of the first full reconcile. */
  onFirstSync(counts: ReconcileCounts): void;
  /** Awaited after the first sync is programmed, before onFirstSync (the start-up collection, startup-gc.ts). */
  beforeFirstSync?(): Promise<unknown>;
  /** The peer count changed after the first sync. */
  onChange?(): void;
}

/**
 * How many peers are programmed, and the ignored ones by store key, for /metrics and STATUS=. The programmed keys
 * themselves are the reconciler's fragment ids (target.has): no second set of 10,000 keys.
 */
export class PeerSet {
  programmed = 0;
  readonly ignored = new Set<string>();
}

const peerLine = (l: Lease, isNew: boolean): string => `peer ${formatCIDR(l.subnet)} at ${l.attrs.publicIP} ${isNew ? "added" : "changed"}`;

/** Peers logged one by one during the initial sync; the rest are in the start-up summary (and at debug level). */
export const NAMED_AT_START = 20;

export async function runPeerLoop(events: AsyncIterable<PeerEvent>, deps: PeerLoopDeps, peers = new PeerSet()): Promise<void> {
  const { backend, target } = deps;
  let synced = false;
  let named = 0;
  // A peer's fragment id is its store key ("subnets/10.5.7.0-24"; the only other id is the reconciler's "local"): the
  // string the peer maps already hold, not a new one per peer.
  const unprogram = (key: string): boolean => {
    const had = target.has(key);
    target.delete(key);
    if (had) peers.programmed--;
    return had;
  };
  const ignore = (key: string, why: string) => {
    if (!peers.ignored.has(key)) log.warn(`ignoring peer ${key}: ${why}`);
    peers.ignored.add(key);
    unprogram(key);
  };
  for await (const ev of events) {
    switch (ev.type) {
      case "added": {
        const ps = backend.peerState(ev.lease);
        if ("ignored" in ps) {
          ignore(ev.key, ps.ignored);
          break;
        }
        const isNew = !target.has(ev.key);
        try {
          target.set(ev.key, ps.state);
        } catch (e) {
          ignore(ev.key, (e as Error).message); // the kernel layer's validation is the last line of defence
          break;
        }
        peers.ignored.delete(ev.key);
        if (isNew) peers.programmed++;
        // The initial sync names the first few peers; a 10,000-peer start is one summary line, not 10,000 (debug has
        // them: the line is built only if it is logged).
        if (synced || ++named <= NAMED_AT_START) log.info(peerLine(ev.lease, isNew));
        else if (log.level >= LogLevels.debug) log.debug(peerLine(ev.lease, isNew));
        if (synced && isNew) deps.onChange?.();
        break;
      }
      case "removed": {
        log.info(`peer ${formatCIDR(ev.lease.subnet)} at ${ev.lease.attrs.publicIP} removed`);
        const had = unprogram(ev.key);
        peers.ignored.delete(ev.key);
        if (synced && had) deps.onChange?.();
        break;
      }
      case "own":
        deps.onOwn(ev.lease);
        break;
      case "synced":
        if (!synced) {
          synced = true;
          const counts = await target.fullReconcile();
          target.start();
          await deps.beforeFirstSync?.();
          deps.onFirstSync(counts);
        }
        break;
    }
  }
}
