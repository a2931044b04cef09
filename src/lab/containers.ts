// A "container" behind each lab host: what Docker does with --bip=$FLANNEL_SUBNET --mtu=$FLANNEL_MTU, by hand: a
// cni0 bridge on the subnet's .1 and one namespace on its .2, default via .1.
import { readSubnetEnv } from "./agents.ts";
import { addrAdd, bridgeAdd, defaultRouteAdd, linkSetMaster, linkUp, vethAdd } from "./netns.ts";
import { type LabHost, LabError, type LabState, addNamespace, containerName, saveState } from "./state.ts";

/** "10.5.72.1/24" -> { gw: "10.5.72.1", container: "10.5.72.2", prefix: 24 } */
function containerAddrs(flannelSubnet: string): { gw: string; container: string; prefix: number } {
  const [addr, prefix] = flannelSubnet.split("/") as [string, string];
  const o = addr.split(".").map(Number);
  const container = [o[0], o[1], o[2], (o[3] ?? 0) + 1].join(".");
  return { gw: addr, container, prefix: Number(prefix) };
}

export async function addContainer(s: LabState, h: LabHost): Promise<void> {
  const env = readSubnetEnv(h);
  if (!env) throw new LabError(`${h.subnetFile} has no usable FLANNEL_SUBNET/FLANNEL_MTU`);
  const { gw, container, prefix } = containerAddrs(env.subnet);
  const cns = containerName(s, h.index);
  await addNamespace(s, cns);
  h.containerNetns = cns;
  saveState(s);
  await bridgeAdd(h.netns, "cni0", env.mtu);
  await addrAdd(h.netns, "cni0", `${gw}/${prefix}`);
  await linkUp(h.netns, "cni0");
  await vethAdd({ name: "vc0", netns: h.netns }, { name: "eth0", netns: cns }, env.mtu);
  await linkSetMaster(h.netns, "vc0", "cni0");
  await linkUp(h.netns, "vc0");
  await addrAdd(cns, "eth0", `${container}/${prefix}`);
  await linkUp(cns, "eth0");
  await defaultRouteAdd(cns, gw);
  h.containerIP = container;
  saveState(s);
}
