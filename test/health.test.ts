import { expect, test } from "bun:test";
import { healthApp } from "../src/health.ts";

test("healthz always 200, readyz 503 until ready", async () => {
  const state = { ready: false, waitingFor: "lease" };
  const app = healthApp(state);
  const h = await app.request("/healthz");
  expect(h.status).toBe(200);
  expect(await h.text()).toBe("flannel-bin is running");
  const r1 = await app.request("/readyz");
  expect(r1.status).toBe(503);
  expect(await r1.text()).toContain("not ready yet: lease");
  state.ready = true;
  const r2 = await app.request("/readyz");
  expect(r2.status).toBe(200);
  expect(await r2.text()).toBe("flannel-bin is ready");
  expect((await app.request("/other")).status).toBe(404);
});
