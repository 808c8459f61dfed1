import type { RegistryEvent } from "./event";

/**
 * The delivery records (D1 table `deliveries`, migrations/0002_deliveries.sql): one row per
 * (event, endpoint) whose delivery did not simply succeed at the first try. A message
 * retried by the queue re-sends only to the endpoints without a `delivered` row, so the
 * happy path (every endpoint answers 2xx at once) writes nothing here.
 *
 *   pending    an attempt failed; the queue retries the message
 *   delivered  delivered after a failure or a redrive (never re-sent)
 *   failed     the message was dead-lettered (kept with the event, for a redrive)
 *   redriven   a redrive re-queued it for this endpoint; delivered or failed again later
 */
export type DeliveryStatus = "pending" | "delivered" | "failed" | "redriven";
export const DELIVERY_STATUSES: readonly DeliveryStatus[] = ["pending", "delivered", "failed", "redriven"];

/** One attempt's outcome, or the dead-letter queue's verdict, for one (event, endpoint). */
export interface DeliveryUpdate {
  eventId: string;
  endpoint: string;
  status: DeliveryStatus;
  /** 1 for an attempt made, 0 for a verdict (dead-lettered, redriven). */
  attempted: 0 | 1;
  /** The endpoint's HTTP status; 0: no answer (refused, timed out). */
  lastStatus?: number;
  lastError?: string;
  /** Kept with a failed delivery, for its redrive. */
  event?: RegistryEvent;
}

export interface DeliveryRecord {
  endpoint: string;
  eventId: string;
  status: DeliveryStatus;
  attempts: number;
  lastStatus: number | null;
  lastError: string | null;
  /** When the row last changed (ISO 8601). */
  updated: string;
  /** The event, as kept for a failed delivery (absent on other rows). */
  event: RegistryEvent | null;
}

interface DeliveryRow {
  event_id: string;
  endpoint: string;
  status: DeliveryStatus;
  attempts: number;
  last_status: number | null;
  last_error: string | null;
  updated: number;
  event: string | null;
}

/** D1 binds at most 100 parameters per statement. */
const IDS_PER_QUERY = 90;

const UPSERT = `INSERT INTO deliveries (event_id, endpoint, status, attempts, last_status, last_error, updated, event)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
ON CONFLICT (event_id, endpoint) DO UPDATE SET
  status = excluded.status,
  attempts = deliveries.attempts + excluded.attempts,
  last_status = COALESCE(excluded.last_status, deliveries.last_status),
  last_error = COALESCE(excluded.last_error, deliveries.last_error),
  updated = excluded.updated,
  event = COALESCE(excluded.event, deliveries.event)
WHERE deliveries.status <> 'delivered'`;

function parseEvent(text: string | null): RegistryEvent | null {
  if (text === null) return null;
  try {
    return JSON.parse(text) as RegistryEvent;
  } catch {
    return null;
  }
}

function recordOf(row: DeliveryRow): DeliveryRecord {
  return {
    endpoint: row.endpoint,
    eventId: row.event_id,
    status: row.status,
    attempts: row.attempts,
    lastStatus: row.last_status,
    lastError: row.last_error,
    updated: new Date(row.updated).toISOString(),
    event: parseEvent(row.event),
  };
}

export class DeliveryLog {
  constructor(private readonly db: D1Database) {}

  /** For each event id, the endpoints it was delivered to (on an earlier attempt). */
  async delivered(eventIds: readonly string[]): Promise<Map<string, Set<string>>> {
    const delivered = new Map<string, Set<string>>();
    for (let start = 0; start < eventIds.length; start += IDS_PER_QUERY) {
      const ids = eventIds.slice(start, start + IDS_PER_QUERY);
      const { results } = await this.db
        .prepare(
          `SELECT event_id, endpoint FROM deliveries WHERE status = 'delivered' AND event_id IN (${ids.map(() => "?").join(", ")})`,
        )
        .bind(...ids)
        .all<{ event_id: string; endpoint: string }>();
      for (const row of results) {
        const endpoints = delivered.get(row.event_id) ?? new Set<string>();
        endpoints.add(row.endpoint);
        delivered.set(row.event_id, endpoints);
      }
    }
    return delivered;
  }

  /** Records outcomes, in one batch (a `delivered` row is never changed again). */
  async record(updates: readonly DeliveryUpdate[], now = Date.now()): Promise<void> {
    if (updates.length === 0) return;
    const statement = this.db.prepare(UPSERT);
    await this.db.batch(
      updates.map((update) =>
        statement.bind(
          update.eventId,
          update.endpoint,
          update.status,
          update.attempted,
          update.lastStatus ?? null,
          update.lastError ?? null,
          now,
          update.event ? JSON.stringify(update.event) : null,
        ),
      ),
    );
  }

  /** The newest records of a status (and endpoint), at most `limit`. */
  async list(status: DeliveryStatus, { endpoint, limit = 100 }: { endpoint?: string; limit?: number } = {}) {
    const { results } = await this.db
      .prepare(
        `SELECT * FROM deliveries WHERE status = ?1 AND (?2 IS NULL OR endpoint = ?2) ORDER BY updated DESC LIMIT ?3`,
      )
      .bind(status, endpoint ?? null, limit)
      .all<DeliveryRow>();
    return results.map(recordOf);
  }

  /** How many records have a status. */
  async count(status: DeliveryStatus, endpoint?: string): Promise<number> {
    const row = await this.db
      .prepare(`SELECT COUNT(*) AS count FROM deliveries WHERE status = ?1 AND (?2 IS NULL OR endpoint = ?2)`)
      .bind(status, endpoint ?? null)
      .first<{ count: number }>();
    return row?.count ?? 0;
  }

  /**
   * Claims up to `limit` failed deliveries for a redrive, oldest first: marked `redriven` in
   * one statement, so two redrives at once never both take the same one.
   */
  async claimFailed({ endpoint, limit }: { endpoint?: string; limit: number }, now = Date.now()) {
    const { results } = await this.db
      .prepare(
        `UPDATE deliveries SET status = 'redriven', updated = ?1
         WHERE rowid IN (SELECT rowid FROM deliveries WHERE status = 'failed' AND (?2 IS NULL OR endpoint = ?2)
                         ORDER BY updated LIMIT ?3)
         RETURNING *`,
      )
      .bind(now, endpoint ?? null, limit)
      .all<DeliveryRow>();
    return results.map(recordOf);
  }

  /** Gives claimed deliveries back (their redrive could not be queued). */
  async release(records: readonly DeliveryRecord[]): Promise<void> {
    if (records.length === 0) return;
    const statement = this.db.prepare(
      `UPDATE deliveries SET status = 'failed' WHERE event_id = ?1 AND endpoint = ?2 AND status = 'redriven'`,
    );
    await this.db.batch(records.map((record) => statement.bind(record.eventId, record.endpoint)));
  }

  /** Drops the records of deliveries made before `before` (ms): they only kept retries from re-sending. */
  async prune(before: number): Promise<void> {
    await this.db.prepare(`DELETE FROM deliveries WHERE status = 'delivered' AND updated < ?1`).bind(before).run();
  }
}

export function deliveryLogOf(env: Env): DeliveryLog {
  return new DeliveryLog(env.AUDIT);
}
