import { app } from "./app";
import { pruneAudit } from "./audit/audit";
import { consumeQueue, eventsMaintenance } from "./events/consumer";
import { collectorOf } from "./gc/collector";
import { revokedSessionsOf } from "./registry/registry";

export { LoginLimiter } from "./auth/login-limiter";
export { GarbageCollector } from "./gc/collector";
export { NamespaceUsage } from "./quotas/namespace-usage";
export { UploadSession } from "./uploads/upload-session";

export default {
  // Locally, a client address is believed only when the front sent it (auth/client-address.ts).
  fetch: (request: Request, env: Env, ctx: ExecutionContext) => app.fetch(request, env, ctx),
  /**
   * The Cron Trigger (wrangler.toml [triggers]): starts a garbage collection run unless one
   * is running, drops the records of revoked web sessions that have expired anyway, and
   * the audit log's rows older than AUDIT_RETENTION_DAYS, and sends the events the outbox
   * kept (src/events).
   */
  async scheduled(_controller, env, ctx) {
    ctx.waitUntil(collectorOf(env).start({ trigger: "cron" }));
    ctx.waitUntil(revokedSessionsOf(env).prune(Math.floor(Date.now() / 1000)));
    ctx.waitUntil(pruneAudit(env));
    ctx.waitUntil(eventsMaintenance(env));
  },
  /** The EVENTS queue and its dead-letter queue (wrangler.toml): webhook deliveries (src/events/consumer.ts). */
  queue: (batch, env) => consumeQueue(batch, env),
} satisfies ExportedHandler<Env>;
