import { Hono } from "hono";
import { readConfig } from "../config";
import { RegistryError } from "../oci/errors";
import { verifyStorage } from "../registry/integrity";
import { storageOf } from "../registry/storage";
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

function requireAdmin(c: AppContext): void {
  const token = c.env.ADMIN_TOKEN;
  if (!token) throw new RegistryError("UNSUPPORTED", "no such endpoint", undefined, {}, 404);
  const presented = /^Bearer (.+)$/.exec(c.req.header("Authorization") ?? "")?.[1] ?? "";
  if (!sameText(presented, token)) throw new RegistryError("DENIED", "admin token required");
}

// POST /_admin/verify[?rehash=0][&repair=1]: the integrity check (scripts/verify.mjs).
adminRoutes.post("/verify", async (c) => {
  requireAdmin(c);
  const report = await verifyStorage(storageOf(c.env), {
    rehash: c.req.query("rehash") !== "0",
    repair: c.req.query("repair") === "1",
    orphanAgeMs: readConfig(c.env).uploadTtlSeconds * 1000,
  });
  return c.json(report);
});
