import { app } from "./app";
import { pruneAudit } from "./audit/audit";
import { withVerifiedClientAddress } from "./auth/client-address";
import { collectorOf } from "./gc/collector";
import { revokedSessionsOf } from "./registry/registry";

export { LoginLimiter } from "./auth/login-limiter";
export { GarbageCollector } from "./gc/collector";
export { UploadSession } from "./uploads/upload-session";

export default {
  // Locally, a client address is believed only when the front sent it (auth/client-address.ts).
  fetch: (request: Request, env: Env, ctx: ExecutionContext) =>
    app.fetch(withVerifiedClientAddress(request, env), env, ctx),
  /**
   * The Cron Trigger (wrangler.toml [triggers]): starts a garbage collection run unless one
   * is running, drops the records of revoked web sessions that have expired anyway, and
   * the audit log's rows older than AUDIT_RETENTION_DAYS.
   */
  async scheduled(_controller, env, ctx) {
    ctx.waitUntil(collectorOf(env).start({ trigger: "cron" }));
    ctx.waitUntil(revokedSessionsOf(env).prune(Math.floor(Date.now() / 1000)));
    ctx.waitUntil(pruneAudit(env));
  },
} satisfies ExportedHandler<Env>;
