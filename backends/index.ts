// Backend factory: picks the backend named by the network config's Backend.Type.
import { type Backend, type BackendContext, BackendError } from "./backend.ts";
import { createHostGwBackend } from "./host-gw.ts";
import { createVxlanBackend } from "./vxlan.ts";

export function createBackend(ctx: BackendContext): Backend {
  const type: string = ctx.config.backend.type;
  switch (type) {
    case "vxlan":
      return createVxlanBackend(ctx);
    case "host-gw":
      return createHostGwBackend(ctx);
    default:
      throw new BackendError(`unsupported backend type ${JSON.stringify(type)} (supported: vxlan, host-gw)`);
  }
}
