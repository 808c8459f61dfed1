import { waitUntil } from "cloudflare:workers";
import { eventOf, type RegistryEvent } from "../events/event";
import { RegistryError } from "../oci/errors";
import type { ChangeListener, SeamExtension } from "../registry/changes";
import { meterOnEnv } from "../registry/meter";
import { settingsOf } from "../settings/settings";
import { AuditLog, type AuditFilter, type AuditPosition } from "./audit-log";

/**
 * The audit log (docs/architecture.md, "Audit log"): who changed what in which repository,
 * and every login, one row each in D1 (AUDIT), queried by the operators (GET /_admin/audit,
 * `npm run audit`) and shown on a repository's page. What the layers above use; the table
 * itself is audit-log.ts.
 *
 * Rows are written after the answer (waitUntil), so recording costs a request nothing but
 * building the row, and one request's rows (a push's manifest and the tags it moved) go in
 * one D1 call. A write that fails is logged and lost: the audit log is a record to query,
 * not a delivery guarantee (the events' queue is that).
 */

/**
 * How long recorded events wait to be written together: one request's changes (a push's
 * manifest and the tags it moved) and the removals of a collector step, which come a few
 * storage calls apart, share a D1 call. After the answer, so no request waits for it.
 */
const FLUSH_DELAY_MS = 20;
/** Pending events written at once, without waiting (9 INSERTs of at most 7 rows, in one batch). */
const FLUSH_ROWS = 60;

/** Events recorded but not yet written, per AUDIT database. */
class AuditWriter {
  private pending: RegistryEvent[] = [];
  private scheduled = false;

  constructor(private readonly log: AuditLog) {}

  record(event: RegistryEvent): void {
    this.pending.push(event);
    if (this.pending.length >= FLUSH_ROWS) {
      defer(this.flush());
    } else if (!this.scheduled) {
      this.scheduled = true;
      defer(
        new Promise((resolve) => setTimeout(resolve, FLUSH_DELAY_MS)).then(() => {
          this.scheduled = false;
          return this.flush();
        }),
      );
    }
  }

  /** Everything pending, in one D1 call; a failure is logged, and those rows are lost. */
  private async flush(): Promise<void> {
    const events = this.pending.splice(0);
    if (events.length === 0) return;
    try {
      await this.log.append(events);
    } catch (error) {
      console.error(
        `audit: ${events.length} rows lost (D1 failed)`,
        events.map((event) => `${event.action} ${event.repository ?? ""} ${event.actor.name}`).join("; "),
        String(error),
      );
    }
  }
}

/** Writes in flight in this isolate (settled() waits for them). */
const inFlight = new Set<Promise<void>>();

/** Keeps `work` going after the answer is sent; without a request to extend (none), it runs on by itself. */
function defer(work: Promise<void>): void {
  inFlight.add(work);
  void work.finally(() => inFlight.delete(work));
  try {
    waitUntil(work);
  } catch {
    // Outside a request: nothing to extend.
  }
}

/** Until the audit writes this isolate has started are done (tests wait for them). */
export async function auditSettled(): Promise<void> {
  while (inFlight.size > 0) await Promise.all([...inFlight]);
}

const writers = new WeakMap<object, AuditWriter>();

/** The writer of the environment's AUDIT database; none (nothing recorded) where it is not bound. */
function writerOf(env: Env): AuditWriter | null {
  const db = env.AUDIT as D1Database | undefined;
  if (!db) return null;
  let writer = writers.get(db);
  if (!writer) {
    writer = new AuditWriter(new AuditLog(db));
    writers.set(db, writer);
  }
  return writer;
}

/**
 * The change seam's audit listener (registered by app.ts): one row per committed change,
 * the actor as its context says. Never throws and never waits: the row is written later.
 */
export const auditExtension: SeamExtension = {
  name: "audit",
  listeners: (env): ChangeListener[] => [
    {
      name: "audit",
      // A push's manifest.put names the tags it set: who moved a tag, and when, is in the
      // log without the read of each tag a `tag.move` costs.
      wants: (action) => action !== "tag.move",
      changed: (change, context) => writerOf(env)?.record(eventOf(change, context)),
    },
  ],
};

/** How a password was presented: to the token endpoint, as Basic auth on /v2, or to the web pages' login. */
export type LoginVia = "token" | "basic" | "web";

export interface LoginAttempt {
  /** The user name presented (maybe no user's); an OIDC login's issuer#subject (`oidc` when it failed). */
  user: string;
  /** `oidc`: an OIDC login (auth/oidc.ts); default `user`. */
  kind?: "user" | "oidc";
  /** A robot's login (src/auth/robots.ts): the actor is the robot. */
  robot?: boolean;
  success: boolean;
  via: LoginVia;
  /** Why a failure failed: a wrong password, or a locked user name or address. */
  reason?: "password" | "locked";
  address?: string | undefined;
  userAgent?: string | undefined;
  requestId?: string | undefined;
}

/** Records a login's outcome (`login.success` / `login.failure`), written after the answer. */
export function recordLogin(env: Env, attempt: LoginAttempt): void {
  const event: RegistryEvent = {
    id: crypto.randomUUID(),
    time: Date.now(),
    action: attempt.success ? "login.success" : "login.failure",
    actor: { kind: attempt.robot ? "robot" : (attempt.kind ?? "user"), name: attempt.user },
    detail: { via: attempt.via, ...(attempt.reason ? { reason: attempt.reason } : {}) },
  };
  if (attempt.address) event.address = attempt.address;
  if (attempt.userAgent) event.userAgent = attempt.userAgent;
  if (attempt.requestId) event.requestId = attempt.requestId;
  writerOf(env)?.record(event);
}

/**
 * Records an operator's change to the robot tokens (src/auth/robots.ts): `robot.create`
 * or `robot.revoke`, the robot in `detail`; by the admin token (actor `system`/`admin`),
 * or by an administrator of the web pages (`by`).
 */
export function recordRobotChange(
  env: Env,
  action: "robot.create" | "robot.revoke",
  detail: Record<string, string>,
  client: { address?: string | undefined; userAgent?: string | undefined; requestId?: string | undefined },
  by: RegistryEvent["actor"] = { kind: "system", name: "admin" },
): void {
  const event: RegistryEvent = {
    id: crypto.randomUUID(),
    time: Date.now(),
    action,
    actor: by,
    detail,
  };
  if (client.address) event.address = client.address;
  if (client.userAgent) event.userAgent = client.userAgent;
  if (client.requestId) event.requestId = client.requestId;
  writerOf(env)?.record(event);
}

/** Most rows one query returns. */
export const AUDIT_MAX_LIMIT = 1000;

/** A query of the log as the API takes it; `cursor` is a previous page's `next`. */
export interface AuditQuery extends Omit<AuditFilter, "before"> {
  cursor?: string;
}

/** The cursor of a position: opaque to clients (base64url of `time.seq`). */
function cursorOf(position: AuditPosition): string {
  return btoa(`${position.time}.${position.seq}`).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function positionOf(cursor: string): AuditPosition {
  let decoded = "";
  try {
    decoded = atob(cursor.replace(/-/g, "+").replace(/_/g, "/"));
  } catch {
    // Not base64: refused below.
  }
  const match = /^(\d{1,16})\.(\d{1,16})$/.exec(decoded);
  if (!match) throw new RegistryError("UNSUPPORTED", "cursor is not one this endpoint gave", { cursor }, {}, 400);
  return { time: Number(match[1]), seq: Number(match[2]) };
}

/** One page of the log, newest first (one D1 query); `next` continues it. A D1 failure is a 503. */
export async function queryAudit(env: Env, query: AuditQuery): Promise<{ events: RegistryEvent[]; next?: string }> {
  const { cursor, ...filter } = query;
  const page = await new AuditLog(env.AUDIT, meterOnEnv(env)).query({
    ...filter,
    limit: Math.min(Math.max(1, filter.limit), AUDIT_MAX_LIMIT),
    ...(cursor !== undefined ? { before: positionOf(cursor) } : {}),
  });
  return { events: page.events, ...(page.next ? { next: cursorOf(page.next) } : {}) };
}

/** A repository's latest rows, newest first (one D1 query); null when the log cannot be read (logged). */
export async function recentActivity(env: Env, repository: string, limit: number): Promise<RegistryEvent[] | null> {
  try {
    return (await new AuditLog(env.AUDIT, meterOnEnv(env)).query({ repository, limit })).events;
  } catch (error) {
    console.error("audit: the repository's activity could not be read", repository, String(error));
    return null;
  }
}

/** The daily prune (index.ts `scheduled`): rows older than AUDIT_RETENTION_DAYS go, in bounded steps. */
export async function pruneAudit(env: Env, now = Date.now()): Promise<number> {
  const cutoff = now - settingsOf(env).audit.retentionDays * 86_400_000;
  try {
    return await new AuditLog(env.AUDIT).prune(cutoff);
  } catch (error) {
    console.error("audit: the prune failed; the next run goes on", String(error));
    return 0;
  }
}
