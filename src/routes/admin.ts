import { settingsOf } from "../settings/settings";
import { Hono } from "hono";
import { RegistryError } from "../oci/errors";
import { collectorOf } from "../gc/collector";
import { verifyRegistry } from "../registry/registry";
import { checkUsage, quotaUsage } from "../quotas/usage-reports";
import type { AppContext, AppEnv } from "./http";

/**
 * Operator endpoints, outside the distribution API. Off unless the ADMIN_TOKEN secret
 * is set, and then only for a request bearing it.
 */
export const adminRoutes = new Hono<AppEnv>();

/** Compares without an early exit, so the time taken says nothing about the token. */
function sameText(a: string, b: string): boolean {
  const left = new TextEncoder().encode(a);
  const right = new TextEncoder().encode(b);
  let difference = left.length ^ right.length;
  for (let index = 0; index < Math.max(left.length, right.length); index++) {
    difference |= (left[index] ?? 0) ^ (right[index] ?? 0);
  }
  return difference === 0;
}

export function requireAdmin(c: AppContext): void {
  const token = settingsOf(c.env).adminToken;
  if (!token) throw new RegistryError("UNSUPPORTED", "no such endpoint", undefined, {}, 404);
  const presented = /^Bearer (.+)$/.exec(c.req.header("Authorization") ?? "")?.[1] ?? "";
  if (!sameText(presented, token)) throw new RegistryError("DENIED", "admin token required");
}

// POST /_admin/verify[?rehash=0][&repair=1]: the integrity check (scripts/verify.mjs), with
// each quota namespace's recorded usage checked against its links (src/quotas).
adminRoutes.post("/verify", async (c) => {
  requireAdmin(c);
  const repair = c.req.query("repair") === "1";
  const report = await verifyRegistry(c.env, {
    rehash: c.req.query("rehash") !== "0",
    repair,
    orphanAgeMs: settingsOf(c.env).uploadTtlSeconds * 1000,
  });
  await checkUsage(c.env, report, repair);
  return c.json(report);
});

/** Repositories listed per namespace by GET /_admin/usage unless `repositories=` says otherwise. */
const USAGE_REPOSITORIES = 100;

// GET /_admin/usage[?namespace=team][&repositories=N]: each quota's namespace, its usage and
// limit, and its largest repositories (at most 1000).
adminRoutes.get("/usage", async (c) => {
  requireAdmin(c);
  const requested = Number(c.req.query("repositories") ?? USAGE_REPOSITORIES);
  if (!Number.isSafeInteger(requested) || requested < 0 || requested > 1000) {
    throw new RegistryError("PAGINATION_NUMBER_INVALID", "repositories must be a whole number from 0 to 1000");
  }
  const namespace = c.req.query("namespace");
  const namespaces = await quotaUsage(c.env, { repositories: requested, ...(namespace ? { namespace } : {}) });
  if (namespace && namespaces.length === 0) {
    throw new RegistryError("NAME_UNKNOWN", "no quota names that namespace", { namespace });
  }
  return c.json({ namespaces });
});

/**
 * POST /_admin/gc[?dry-run=1][&grace=SECONDS]: starts a garbage collection run (202 with
 * the run), or answers 409 with the run in progress. GET /_admin/gc[?items=1]: the
 * current or last run (404 before the first), with what it removed when `items=1`.
 */
adminRoutes.post("/gc", async (c) => {
  requireAdmin(c);
  const grace = c.req.query("grace");
  let graceSeconds: number | undefined;
  if (grace !== undefined) {
    graceSeconds = Number(grace);
    if (!Number.isSafeInteger(graceSeconds) || graceSeconds < 0)
      throw new RegistryError("UNSUPPORTED", "grace must be a whole number of seconds", { grace });
  }
  const dryRun = ["1", "true"].includes(c.req.query("dry-run") ?? "");
  const result = await collectorOf(c.env).start({
    dryRun,
    ...(graceSeconds === undefined ? {} : { graceSeconds }),
  });
  if (!result.started) {
    return c.json(
      { errors: [{ code: "DENIED", message: "a garbage collection run is in progress", detail: result.run }] },
      409,
    );
  }
  return c.json(result.run, 202);
});

adminRoutes.get("/gc", async (c) => {
  requireAdmin(c);
  const run = await collectorOf(c.env).status({ items: c.req.query("items") === "1" });
  if (!run) return c.json({ errors: [{ code: "UNSUPPORTED", message: "no garbage collection run yet" }] }, 404);
  return c.json(run);
});
