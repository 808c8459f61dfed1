import { Hono } from "hono";
import { RegistryError } from "../oci/errors";
import { DELIVERY_STATUSES, deliveryLogOf, type DeliveryRecord, type DeliveryStatus } from "../events/deliveries";
import { MAX_REDRIVE, redriveFailed } from "../events/redrive";
import { requireAdmin } from "./admin";
import type { AppContext, AppEnv } from "./http";

/**
 * Webhook deliveries, for operators (docs/operations.md, "Receiving events"), behind the
 * admin token like the other /_admin endpoints:
 *
 *   GET  /_admin/deliveries[?status=failed|pending|delivered|redriven][&endpoint=ID][&limit=N]
 *   POST /_admin/deliveries/redrive[?endpoint=ID][&limit=N]
 */
export const adminDeliveryRoutes = new Hono<AppEnv>();

const MAX_LIST = 1000;

function limitOf(c: AppContext, fallback: number, max: number): number {
  const text = c.req.query("limit");
  if (text === undefined) return fallback;
  const limit = Number(text);
  if (!/^\d+$/.test(text) || limit < 1 || limit > max) {
    throw new RegistryError("UNSUPPORTED", `limit must be a whole number from 1 to ${max}`, { limit: text });
  }
  return limit;
}

/** A delivery as the API lists it: the event summed up, not kept whole. */
function listed(record: DeliveryRecord) {
  const { event, ...delivery } = record;
  if (!event) return delivery;
  const { action, repository, digest, tags, time } = event;
  return { ...delivery, event: { action, repository, digest, tags, time: new Date(time).toISOString() } };
}

adminDeliveryRoutes.get("/deliveries", async (c) => {
  requireAdmin(c);
  const status = (c.req.query("status") ?? "failed") as DeliveryStatus;
  if (!DELIVERY_STATUSES.includes(status)) {
    throw new RegistryError("UNSUPPORTED", `status must be one of ${DELIVERY_STATUSES.join(", ")}`, { status });
  }
  const endpoint = c.req.query("endpoint");
  const records = await deliveryLogOf(c.env).list(status, {
    ...(endpoint !== undefined ? { endpoint } : {}),
    limit: limitOf(c, 100, MAX_LIST),
  });
  return c.json({ deliveries: records.map(listed) });
});

adminDeliveryRoutes.post("/deliveries/redrive", async (c) => {
  requireAdmin(c);
  const endpoint = c.req.query("endpoint");
  const result = await redriveFailed(c.env, {
    ...(endpoint !== undefined ? { endpoint } : {}),
    limit: limitOf(c, MAX_REDRIVE, MAX_REDRIVE),
  });
  return c.json(result, 202);
});
