// Builders for iproute2 batch lines. A Command is only ever made here, from typed values that pass through
// validate.ts, so no store text reaches a command line unchecked. Every value is a single word without spaces,
// quotes or '#', which is what `ip -batch`'s line splitter needs.
import type { Address, Fdb, Neigh, Nexthop, Route, VxlanDevice } from "./types.ts";
import {
  validDevName,
  validFdb,
  validIP,
  validIfAddr,
  validMAC,
  validMTU,
  validNeigh,
  validNet,
  validNexthop,
  validNexthopId,
  validProto,
  validRoute,
  validVxlanDevice,
} from "./validate.ts";

export type Tool = "ip" | "bridge";

export interface Command {
  readonly tool: Tool;
  /** The batch line: the words joined by spaces (not kept as an array: 40,000 commands at a 10k-peer start). */
  readonly line: string;
  /** For deletes: the kernel saying "not there" means the goal is reached, so it counts as success. */
  readonly absentOk?: boolean;
}

const make = (tool: Tool, words: string[], absentOk = false): Command =>
  absentOk ? { tool, line: words.join(" "), absentOk } : { tool, line: words.join(" ") };
/** The per-peer builders write their line in one template: no word array and join for 20,000-40,000 commands. */
const line = (tool: Tool, text: string): Command => ({ tool, line: text });

// ---- routes (main table, always tagged with our protocol number)

export function routeReplace(route: Route, proto: number): Command {
  const r = validRoute(route);
  const p = validProto(proto);
  return line("ip", `route replace ${r.dst} via ${r.via} dev ${r.dev}${r.onlink ? " onlink" : ""} proto ${p}`);
}

/** `route` through nexthop object `nhid` (which holds the route's gateway, device and onlink flag). */
export function routeReplaceNh(route: Route, nhid: number, proto: number): Command {
  const r = validRoute(route);
  return line("ip", `route replace ${r.dst} nhid ${validNexthopId(nhid)} proto ${validProto(proto)}`);
}

/**
 * Deletes only a route with our protocol (and the given nexthop, or gateway/device, when known), never someone
 * else's. A route through a nexthop object matches no "via"/"dev" in a delete (the kernel answers "No such process",
 * which would pass as already gone), so it is named by its nhid.
 */
export function routeDel(route: { dst: string; via?: string; dev?: string; nhid?: number }, proto: number): Command {
  const w = ["route", "del", validNet(route.dst, "route dst")];
  if (route.nhid !== undefined) w.push("nhid", String(validNexthopId(route.nhid)));
  else {
    if (route.via !== undefined) w.push("via", validIP(route.via, "route via"));
    if (route.dev !== undefined) w.push("dev", validDevName(route.dev, "route dev"));
  }
  w.push("proto", String(validProto(proto)));
  return make("ip", w, true);
}

// ---- nexthop objects (Linux >= 5.3), tagged with our protocol number like our routes

export function nexthopReplace(nh: Nexthop, proto: number): Command {
  const n = validNexthop(nh);
  const p = validProto(proto);
  return line("ip", `nexthop replace id ${n.id} via ${n.via} dev ${n.dev}${n.onlink ? " onlink" : ""} proto ${p}`);
}

/** Deleting a nexthop also deletes every route through it (without route notifications): routes go first. */
export function nexthopDel(id: number): Command {
  return make("ip", ["nexthop", "del", "id", String(validNexthopId(id))], true);
}

// ---- neighbours (permanent ARP / NDP entries)

export function neighReplace(neigh: Neigh): Command {
  const n = validNeigh(neigh);
  return line("ip", `neigh replace ${n.ip} lladdr ${n.lladdr} dev ${n.dev} nud permanent`);
}

export function neighDel(neigh: { dev: string; ip: string }): Command {
  return make("ip", ["neigh", "del", validIP(neigh.ip, "neighbour ip"), "dev", validDevName(neigh.dev, "neighbour dev")], true);
}

// ---- forwarding database (vxlan remote VTEPs)

export function fdbReplace(fdb: Fdb): Command {
  const f = validFdb(fdb);
  return line("bridge", `fdb replace ${f.mac} dev ${f.dev} dst ${f.dst} self permanent`);
}

/** Adds a further remote for the MAC (vxlan keeps a list of remotes per MAC); idempotent for an equal entry. */
export function fdbDel(fdb: Fdb): Command {
  const f = validFdb(fdb);
  return make("bridge", ["fdb", "del", f.mac, "dev", f.dev, "dst", f.dst, "self"], true);
}

// ---- links

export function linkAddVxlan(dev: VxlanDevice): Command {
  const d = validVxlanDevice(dev);
  const w = ["link", "add", d.name, "address", d.mac, "mtu", String(d.mtu), "type", "vxlan", "id", String(d.vni)];
  w.push("local", d.local, "dev", d.underlay, d.learning ? "learning" : "nolearning");
  // Always name the port: "dstport 0" is the kernel default (8472) and keeps ip from printing a warning on stderr.
  w.push("dstport", String(d.port));
  if (d.gbp) w.push("gbp");
  return make("ip", w);
}

export function linkDel(name: string): Command {
  return make("ip", ["link", "del", validDevName(name)], true);
}

export function linkSetUp(name: string): Command {
  return make("ip", ["link", "set", "dev", validDevName(name), "up"]);
}

export function linkSetMtu(name: string, mtu: number): Command {
  return make("ip", ["link", "set", "dev", validDevName(name), "mtu", String(validMTU(mtu))]);
}

export function linkSetMac(name: string, mac: string): Command {
  return make("ip", ["link", "set", "dev", validDevName(name), "address", validMAC(mac)]);
}

export function linkSetVxlanLearning(name: string, learning: boolean): Command {
  return make("ip", ["link", "set", "dev", validDevName(name), "type", "vxlan", learning ? "learning" : "nolearning"]);
}

// ---- addresses

export function addrReplace(a: Address): Command {
  return make("ip", ["addr", "replace", validIfAddr(a.cidr, "address cidr"), "dev", validDevName(a.dev, "address dev")]);
}

export function addrDel(a: Address): Command {
  return make("ip", ["addr", "del", validIfAddr(a.cidr, "address cidr"), "dev", validDevName(a.dev, "address dev")], true);
}
