import { app } from "./app";
import { collectorOf } from "./gc/collector";

export { LoginLimiter } from "./auth/login-limiter";
export { GarbageCollector } from "./gc/collector";
export { UploadSession } from "./uploads/upload-session";

export default {
  fetch: app.fetch,
  /** The Cron Trigger (wrangler.toml [triggers]): starts a garbage collection run unless one is running. */
  async scheduled(_controller, env, ctx) {
    ctx.waitUntil(collectorOf(env).start({ trigger: "cron" }));
  },
} satisfies ExportedHandler<Env>;
