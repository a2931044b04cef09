// The lab's network: an underlay namespace with bridge br0 and one namespace per host, its eth0 on br0. Nothing ever
// appears in the root namespace: each veth is created with its ends already in their namespaces.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { addrAdd, bridgeAdd, defaultRouteAdd, linkSetMaster, linkUp, sysctlSet, vethAdd } from "./netns.ts";
import { type LabHost, type LabState, addNamespace, hostName, recordPath, saveState } from "./state.ts";

export const UNDERLAY_GATEWAY = "192.0.2.1";
export const UNDERLAY_PREFIX = 24;

export async function addUnderlay(s: LabState): Promise<void> {
  await addNamespace(s, s.underlay);
  await bridgeAdd(s.underlay, "br0");
  await addrAdd(s.underlay, "br0", `${UNDERLAY_GATEWAY}/${UNDERLAY_PREFIX}`);
  await linkUp(s.underlay, "br0");
}

/** Host I: namespace, eth0 = 192.0.2.(10+I) on the underlay bridge, default route, forwarding on. */
export async function addHostNamespace(s: LabState, i: number): Promise<LabHost> {
  const ns = hostName(s, i);
  const dir = join(s.stateDir, ns);
  const h: LabHost = {
    netns: ns,
    index: i,
    publicIP: `192.0.2.${10 + i}`,
    dir,
    subnetFile: join(dir, "subnet.env"),
    logFile: join(dir, "agent.log"),
    agentPid: null,
    containerNetns: null,
    containerIP: null,
  };
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  recordPath(s, dir);
  await addNamespace(s, ns);
  s.hosts.push(h);
  saveState(s);
  await vethAdd({ name: `vh${i}`, netns: s.underlay }, { name: "eth0", netns: ns });
  await linkSetMaster(s.underlay, `vh${i}`, "br0");
  await linkUp(s.underlay, `vh${i}`);
  await addrAdd(ns, "eth0", `${h.publicIP}/${UNDERLAY_PREFIX}`);
  await linkUp(ns, "eth0");
  // The agent picks the default-route interface when not told otherwise; give it one.
  await defaultRouteAdd(ns, UNDERLAY_GATEWAY);
  // Hosts forward container traffic (Docker would set this).
  await sysctlSet(ns, "net.ipv4.ip_forward", "1");
  return h;
}
