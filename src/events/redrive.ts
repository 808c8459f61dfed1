import { unavailable } from "../oci/errors";
import { deliveryLogOf, type DeliveryRecord } from "./deliveries";
import type { EventMessage } from "./message";

/** Most failed deliveries one redrive re-queues (a queue batch send takes at most 100 messages). */
export const MAX_REDRIVE = 100;

export interface RedriveResult {
  /** Failed deliveries re-queued. */
  redriven: number;
  /** Messages sent: one per event, naming the endpoints it goes to again. */
  events: number;
  /** Failed deliveries left (a larger backlog takes several redrives). */
  remaining: number;
}

/**
 * Re-queues failed deliveries (`POST /_admin/deliveries/redrive`): each event goes again
 * only to the endpoints that never had it, and each failed delivery is claimed by one
 * redrive (marked `redriven`), so a second redrive sends nothing twice. Delivered, it is
 * marked `delivered`; failing again, it comes back as `failed`.
 */
export async function redriveFailed(
  env: Env,
  { endpoint, limit = MAX_REDRIVE }: { endpoint?: string; limit?: number } = {},
): Promise<RedriveResult> {
  const log = deliveryLogOf(env);
  const claimed = await log.claimFailed({
    ...(endpoint !== undefined ? { endpoint } : {}),
    limit: Math.min(limit, MAX_REDRIVE),
  });
  const byEvent = new Map<string, { records: DeliveryRecord[]; message: EventMessage | null }>();
  for (const record of claimed) {
    const entry = byEvent.get(record.eventId) ?? { records: [], message: null };
    entry.records.push(record);
    if (record.event) entry.message = { event: record.event, only: [...(entry.message?.only ?? []), record.endpoint] };
    byEvent.set(record.eventId, entry);
  }
  const messages = [...byEvent.values()].flatMap((entry) => (entry.message ? [entry.message] : []));
  if (messages.length > 0) {
    try {
      await env.EVENTS.sendBatch(messages.map((body) => ({ body, contentType: "json" as const })));
    } catch (error) {
      await log.release(claimed);
      throw unavailable("the events queue did not take the redrive; retry", { cause: String(error) });
    }
  }
  return {
    redriven: claimed.length,
    events: messages.length,
    remaining: await log.count("failed", endpoint),
  };
}
