import { app } from "./app";
import { withVerifiedClientAddress } from "./auth/client-address";
import { collectorOf } from "./gc/collector";

export { LoginLimiter } from "./auth/login-limiter";
export { GarbageCollector } from "./gc/collector";
export { UploadSession } from "./uploads/upload-session";

export default {
  // Locally, a client address is believed only when the front sent it (auth/client-address.ts).
  fetch: (request: Request, env: Env, ctx: ExecutionContext) =>
    app.fetch(withVerifiedClientAddress(request, env), env, ctx),
  /** The Cron Trigger (wrangler.toml [triggers]): starts a garbage collection run unless one is running. */
  async scheduled(_controller, env, ctx) {
    ctx.waitUntil(collectorOf(env).start({ trigger: "cron" }));
  },
} satisfies ExportedHandler<Env>;
