import { Hono } from "hono";
import { AUDIT_MAX_LIMIT, queryAudit, type AuditQuery } from "../audit/audit";
import { RegistryError } from "../oci/errors";
import { requireAdmin } from "./admin";
import type { AppContext, AppEnv } from "./http";

/**
 * GET /_admin/audit?repository=&actor=&action=&since=&until=&limit=&cursor=: the audit
 * log (src/audit), newest first, `limit` rows a page (default 100, at most 1000), `next`
 * the cursor of the following page. `action` is one (`tag.delete`) or a family
 * (`login.*`); `since` (inclusive) and `until` (exclusive) are ISO times or ms since the
 * epoch. The admin token is required, as for every /_admin endpoint (`npm run audit`).
 */
export const adminAuditRoutes = new Hono<AppEnv>();

const DEFAULT_LIMIT = 100;

function badQuery(message: string, detail: Record<string, string>): RegistryError {
  return new RegistryError("UNSUPPORTED", message, detail, {}, 400);
}

/** An ISO time (`2026-05-01`, `2026-05-01T12:00:00Z`) or ms since the epoch. */
function time(name: string, value: string): number {
  const ms = /^\d+$/.test(value) ? Number(value) : Date.parse(value);
  if (!Number.isSafeInteger(ms)) throw badQuery(`${name} must be an ISO time or ms since the epoch`, { [name]: value });
  return ms;
}

function auditQuery(c: AppContext): AuditQuery {
  const text = (name: string) => {
    const value = c.req.query(name);
    return value === undefined || value === "" ? undefined : value;
  };
  const limitText = text("limit");
  if (limitText !== undefined && !/^[1-9]\d{0,8}$/.test(limitText)) {
    throw badQuery("limit must be a whole number from 1", { limit: limitText });
  }
  const query: AuditQuery = {
    limit: Math.min(AUDIT_MAX_LIMIT, limitText === undefined ? DEFAULT_LIMIT : Number(limitText)),
  };
  for (const name of ["repository", "actor", "action", "cursor"] as const) {
    const value = text(name);
    if (value !== undefined) query[name] = value;
  }
  for (const name of ["since", "until"] as const) {
    const value = text(name);
    if (value !== undefined) query[name] = time(name, value);
  }
  return query;
}

adminAuditRoutes.get("/audit", async (c) => {
  requireAdmin(c);
  const page = await queryAudit(c.env, auditQuery(c));
  c.header("Cache-Control", "no-store");
  return c.json(page);
});
