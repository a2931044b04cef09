// The NATS connection and the KV bucket: options checked, auth and TLS set up, the bucket opened (created if
// missing). Everything the records, the watch and the store need from NATS is in NatsBucket.

import { logger } from "../../src/log.ts";
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import {
  type JetStreamClient,
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamManager,
  jetstream,
  type StreamInfo,
  jetstreamManager,
} from "@nats-io/jetstream";
import { Kvm, type KV as NatsKV } from "@nats-io/kv";
import { type ConnectionOptions, credsAuthenticator, type NatsConnection } from "@nats-io/nats-core";
import { connectNats } from "./bun-transport.ts";
import { StoreUnavailableError } from "../../src/store.ts";
import { storeHealth } from "../../src/store-health.ts";

const log = logger("nats");

export interface NatsStoreOptions {
  /** nats://host:port URLs (tls:// for TLS). */
  servers: string[];
  /** KV bucket name (default "flannel"). */
  bucket?: string;
  user?: string;
  password?: string;
  token?: string;
  /** A NATS .creds file (JWT + NKey seed). */
  credsFile?: string;
  /** CA that signed the server's certificate (PEM). Any of the three TLS files makes the client insist on TLS. */
  cafile?: string;
  /** Client certificate and key (PEM), both or neither, for servers that verify clients. */
  certfile?: string;
  keyfile?: string;
  /** Timeout of the first connection (default 5000 ms). */
  connectTimeoutMs?: number;
  /** Written as the record's owner "o" (default: this host's name). For operators reading the bucket. */
  owner?: string;
  /** Replicas of a bucket this store creates (default 1; 3 on a 3-server cluster survives one server). */
  replicas?: number;
}

/** The open connection and bucket. */
export interface NatsBucket {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  kv: NatsKV;
  bucket: string;
  /** "KV_<bucket>" */
  stream: string;
  /** "$KV.<bucket>." */
  subjectPrefix: string;
  /** The server list, for messages. */
  location: string;
  /**
   * nats-server >= 2.11 with a bucket that allows per-message TTLs: each lease is written with Nats-TTL, the server
   * removes it when it runs out and leaves a delete marker every watcher sees. Otherwise (2.9, 2.10, or a bucket made
   * without it) expiry lives in the value only and the watch synthesises the deletes.
   */
  serverTtl: boolean;
  /**
   * Lists in one batched direct get (direct-list.ts): nats-server >= 2.11 and a stream with allow_direct. Turned off
   * for good if the server turns out to answer without batches.
   */
  directBatch: boolean;
  /** The newest revision this client wrote: a list from a replica behind it is not used (direct-list.ts). */
  written: number;
}

/**
 * How long the server keeps the delete marker of an expired lease. The server also never removes a message sooner
 * than this (a shorter Nats-TTL is raised to it), so it is short; a watch that was away longer re-lists (watch.ts).
 */
const MARKER_TTL_MS = 5000;

/**
 * True for nats-server 2.10 and later. On 2.9 (Debian 12's 2.9.10) a replicated stream does not enforce the expected
 * last sequence of a subject against concurrent writers: two KV updates on the same revision from two clients both
 * succeeded in 40 of 200 races on a 3-server R3 bucket (0 of 200 on 2.10.29 and 2.15.2, same test). Compare-and-set is
 * what keeps two hosts off one subnet, so a replicated bucket needs 2.10+; a single replica is exact on 2.9 too.
 */
export function hasReplicatedCas(version: string | undefined): boolean {
  const m = /^v?(\d+)\.(\d+)/.exec(version ?? "");
  return m !== null && (Number(m[1]) > 2 || (Number(m[1]) === 2 && Number(m[2]) >= 10));
}

/** True for nats-server 2.11 and later (per-message TTL and delete markers). */
export function hasMessageTtl(version: string | undefined): boolean {
  return atLeast211(version);
}

/** True for nats-server 2.11 and later (batched and multi-subject direct gets, ADR-31). */
export function hasBatchDirectGet(version: string | undefined): boolean {
  return atLeast211(version);
}

function atLeast211(version: string | undefined): boolean {
  const m = /^v?(\d+)\.(\d+)/.exec(version ?? "");
  return m !== null && (Number(m[1]) > 2 || (Number(m[1]) === 2 && Number(m[2]) >= 11));
}

/** Settings that can never work against this server (not retried: the agent exits naming them). */
export class StoreSettingsError extends Error {}

const DEFAULT_BUCKET = "flannel";
const BUCKET_HISTORY = 5;

/** A hint for a failed connect that looks like a TLS set-up problem, or "". */
function tlsHint(msg: string, opts: NatsStoreOptions): string {
  if (/certificate|self[- ]signed|unable to verify|UNABLE_TO|CERT_/i.test(msg)) {
    return " (TLS: check that --nats-cafile is the CA that signed the server's certificate and that the certificate names this address)";
  }
  // nats.js does not report a connection the server closes during the TLS/CONNECT exchange (as a 2.9 server with
  // `verify` does to a client without a certificate): the first connect only times out.
  if (/timeout/i.test(msg) && opts.cafile !== undefined && opts.certfile === undefined) {
    return " (if the server requires TLS client certificates (verify), give --nats-certfile and --nats-keyfile)";
  }
  return "";
}

function connectionOptions(opts: NatsStoreOptions, servers: string[]): ConnectionOptions {
  if ((opts.user === undefined) !== (opts.password === undefined)) throw new Error("NATS store: user and password go together");
  const co: ConnectionOptions = {
    servers,
    name: `flannel-bin@${hostname()}`,
    timeout: opts.connectTimeoutMs ?? 5000,
    maxReconnectAttempts: -1, // reconnect forever; watchers resume on their own
    reconnectTimeWait: 500, // plus the client's default jitter, so a fleet does not reconnect in step
    pingInterval: 10_000,
  };
  if (opts.user !== undefined) {
    co.user = opts.user;
    co.pass = opts.password;
  }
  if (opts.token !== undefined) co.token = opts.token;
  if (opts.credsFile !== undefined) {
    let creds: Uint8Array;
    try {
      creds = readFileSync(opts.credsFile);
    } catch (err) {
      throw new Error(`NATS store: cannot read creds file ${opts.credsFile}: ${(err as Error).message}`);
    }
    co.authenticator = credsAuthenticator(creds);
  }
  if ((opts.certfile === undefined) !== (opts.keyfile === undefined)) {
    throw new Error("NATS TLS needs both --nats-certfile and --nats-keyfile (only one was given)");
  }
  if (opts.cafile !== undefined || opts.certfile !== undefined || opts.keyfile !== undefined) {
    // Checked here so a bad path names its flag; the client itself re-reads the files on every (re)connect.
    for (const [flag, path] of [
      ["--nats-cafile", opts.cafile],
      ["--nats-certfile", opts.certfile],
      ["--nats-keyfile", opts.keyfile],
    ] as const) {
      if (path === undefined) continue;
      try {
        readFileSync(path);
      } catch (err) {
        throw new Error(`NATS store: cannot read ${flag} ${path}: ${(err as Error).message}`);
      }
    }
    co.tls = { caFile: opts.cafile, certFile: opts.certfile, keyFile: opts.keyfile };
  }
  return co;
}

/** Logs each disconnect and reconnect once, with the server; counts a disconnect as a store error. */
export function logConnectionChanges(nc: NatsConnection): void {
  void (async () => {
    let down = false;
    for await (const s of nc.status()) {
      if (s.type === "disconnect" && !down) {
        down = true;
        storeHealth.error();
        log.warn(`disconnected from NATS server ${s.server}; reconnecting`);
      } else if (s.type === "reconnect") {
        down = false;
        log.info(`reconnected to NATS server ${s.server}`);
      }
    }
  })().catch(() => {});
}

/** Connects and opens the bucket, creating it if missing. */
export async function openBucket(opts: NatsStoreOptions): Promise<NatsBucket> {
  const servers = opts.servers.map((s) => s.trim()).filter((s) => s !== "");
  if (servers.length === 0) throw new Error("NATS store: no server URL given");
  const location = servers.join(",");
  const bucket = opts.bucket ?? DEFAULT_BUCKET;
  if (!/^[-\w]+$/.test(bucket)) throw new Error(`NATS store: bad bucket name ${JSON.stringify(bucket)} (letters, digits, "-", "_")`);
  const replicas = opts.replicas ?? 1;
  if (!Number.isSafeInteger(replicas) || replicas < 1 || replicas > 5) {
    throw new Error(`NATS store: replicas must be an integer from 1 to 5 (JetStream's limit), got ${String(opts.replicas)}`);
  }
  const co = connectionOptions(opts, servers);

  let nc: NatsConnection;
  try {
    nc = await connectNats(co);
  } catch (err) {
    const msg = (err as Error).message ?? String(err);
    if (/authori[sz]ation|authentication|permissions/i.test(msg) || (err as Error).name === "AuthorizationError") {
      throw new Error(`NATS ${location}: authorization failed (${msg}); check the user/password, token or creds file`, { cause: err });
    }
    throw new StoreUnavailableError(`NATS ${location}: cannot connect: ${msg}${tlsHint(msg, opts)}`, { cause: err });
  }

  try {
    const jsm = await jetstreamManager(nc);
    const js = jetstream(nc);
    const kvm = new Kvm(js);
    const ttlCapable = hasMessageTtl(nc.info?.version);
    let kv: NatsKV;
    let existing: StreamInfo | null = null;
    try {
      existing = await jsm.streams.info(`KV_${bucket}`);
    } catch (err) {
      if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound)) throw err;
    }
    const casProblem = (n: number): string | null =>
      n > 1 && !hasReplicatedCas(nc.info?.version)
        ? `NATS ${location}: KV bucket ${bucket} with ${n} replicas on nats-server ${nc.info?.version ?? "(unknown version)"}: ` +
          "2.9 does not enforce compare-and-set on replicated streams, so two hosts could take one subnet; " +
          "run nats-server 2.10 or later for a replicated bucket, or use --nats-replicas 1"
        : null;
    const refused = casProblem(existing ? existing.config.num_replicas : replicas);
    if (refused) throw new StoreSettingsError(refused);
    if (existing) {
      kv = await kvm.open(bucket);
    } else {
      log.info(`creating KV bucket ${bucket} on ${location} (${replicas} replica${replicas === 1 ? "" : "s"}, history ${BUCKET_HISTORY})`);
      try {
        kv = await kvm.create(bucket, { history: BUCKET_HISTORY, replicas, ...(ttlCapable ? { markerTTL: MARKER_TTL_MS } : {}) });
      } catch (err) {
        // Another node created it between our check and our create (with its own settings): use theirs.
        existing = await jsm.streams.info(`KV_${bucket}`).catch(() => Promise.reject(err));
        kv = await kvm.open(bucket);
      }
    }
    if (existing) {
      // An existing bucket is used as it is (changing a stream under other agents is the operator's call): say so.
      const c = existing.config;
      const diff: string[] = [];
      if (c.num_replicas !== replicas) diff.push(`${c.num_replicas} replica(s), not the ${replicas} asked for (--nats-replicas)`);
      if (c.max_msgs_per_subject !== BUCKET_HISTORY) diff.push(`history ${c.max_msgs_per_subject}, not ${BUCKET_HISTORY}`);
      if (diff.length > 0) log.warn(`KV bucket ${bucket} exists with other settings: ${diff.join("; ")}; using it as it is`);
    }
    const serverTtl = ttlCapable && (existing === null || existing.config.allow_msg_ttl === true);
    if (ttlCapable && !serverTtl) log.info(`KV bucket ${bucket} was made without per-message TTL: lease expiry stays in the value`);
    // One look at the stream made here (the bucket's settings are the creating client's).
    const allowDirect = (existing ?? (await jsm.streams.info(`KV_${bucket}`))).config.allow_direct === true;
    const directBatch = hasBatchDirectGet(nc.info?.version) && allowDirect;
    return {
      nc,
      js,
      jsm,
      kv,
      bucket,
      stream: `KV_${bucket}`,
      subjectPrefix: `$KV.${bucket}.`,
      location,
      serverTtl,
      directBatch,
      written: 0,
    };
  } catch (err) {
    await nc.close().catch(() => {});
    if (err instanceof StoreSettingsError) throw err;
    const msg = (err as Error).message ?? String(err);
    throw new StoreUnavailableError(`NATS ${location}: cannot open KV bucket ${bucket} (is JetStream enabled?): ${msg}`, { cause: err });
  }
}
