// Table keys of the reconciler (diff.ts, nexthops.ts). An IPv4 entry (nearly every one) is keyed by a number built
// from its fields instead of a string: 10,000 peers are 40,000 keys, and a key string costs ~60 bytes where a number
// costs nothing beyond its Map slot. Anything else (IPv6, a device beyond the numbered ones) keeps a string key.
// The same entry always gets the same key: a device's number is fixed once given.

import { ipv4Number } from "../ipmath.ts";

export type Key = string | number;

const P32 = 2 ** 32;
const P48 = 2 ** 48;
const P52 = 2 ** 52;

/**
 * Devices get numbers in the order they are first keyed. Only devices that entries are desired or owned on are
 * numbered (numberedDev(dev, true)); a lookup for any other device (a kernel event on a pod's veth) adds nothing, so
 * the list stays as short as the devices we manage.
 */
const devNumbers = new Map<string, number>();
const devNames: string[] = [];

/** The device's number; -1 for a device never numbered unless `add`. */
function devNumber(dev: string, add: boolean): number {
  const n = devNumbers.get(dev);
  if (n !== undefined) return n;
  if (!add) return -1;
  devNames.push(dev);
  devNumbers.set(dev, devNames.length - 1);
  return devNames.length - 1;
}

/** "aa:bb:cc:dd:ee:ff" (lower-case) as a number, or -1. */
function macNumber(s: string): number {
  if (s.length !== 17) return -1;
  let n = 0;
  for (let i = 0; i < 17; i += 3) {
    const h = hex(s.charCodeAt(i));
    const l = hex(s.charCodeAt(i + 1));
    if (h < 0 || l < 0 || (i < 15 && s.charCodeAt(i + 2) !== 58)) return -1;
    n = n * 256 + h * 16 + l;
  }
  return n;
}

const hex = (c: number): number => (c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : -1);

/** A route: its destination ("10.5.7.0/24" -> address * 64 + prefix). */
export function routeKey(dst: string): Key {
  const slash = dst.indexOf("/");
  const ip = slash > 0 ? ipv4Number(dst, slash) : -1;
  if (ip < 0 || slash < dst.length - 3 || slash === dst.length - 1) return dst;
  const prefix = Number(dst.slice(slash + 1));
  return prefix <= 32 ? ip * 64 + prefix : dst;
}

/**
 * A neighbour (device, IP): device number * 2^32 + address. `add`: number the device if it has none (entries we
 * desire or own); without it a device never numbered gives a string key nothing is stored under.
 */
export function neighKey(dev: string, ip: string, add = false): Key {
  const d = devNumber(dev, add);
  const a = d >= 0 && d < 2 ** 20 ? ipv4Number(ip) : -1;
  return a >= 0 ? d * P32 + a : `${dev} ${ip}`;
}

/** An FDB entry (device, MAC): device number * 2^48 + MAC, for the first 32 devices (2^53 is the limit). */
export function fdbKey(dev: string, mac: string, add = false): Key {
  const d = devNumber(dev, add);
  const m = d >= 0 && d < 32 ? macNumber(mac) : -1;
  return m >= 0 ? d * P48 + m : `${dev} ${mac}`;
}

/** A nexthop (gateway, device, onlink): onlink * 2^52 + device number * 2^32 + gateway. */
export function nexthopKey(via: string, dev: string, onlink: boolean, add = false): Key {
  const d = devNumber(dev, add);
  const a = d >= 0 && d < 2 ** 20 ? ipv4Number(via) : -1;
  return a >= 0 ? (onlink ? P52 : 0) + d * P32 + a : `${via} ${dev}${onlink ? " onlink" : ""}`;
}

/** The device of a neighbour key. */
export const neighKeyDev = (k: Key): string => (typeof k === "number" ? devNames[Math.floor(k / P32)]! : k.slice(0, k.indexOf(" ")));

/** The device of an FDB key. */
export const fdbKeyDev = (k: Key): string => (typeof k === "number" ? devNames[Math.floor(k / P48)]! : k.slice(0, k.indexOf(" ")));
