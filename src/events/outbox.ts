import { isEventMessage, type EventMessage } from "./message";

/**
 * Events whose queue send failed after their change was committed (D1 table `outbox`,
 * migrations/0002_deliveries.sql): kept here, and sent later by whoever drains it (each
 * queue batch and the daily cron), a bounded number per step. A committed change never
 * loses its event silently: if this write fails too, the sender logs the event itself.
 */
export class Outbox {
  constructor(private readonly db: D1Database) {}

  async keep(message: EventMessage, now = Date.now()): Promise<void> {
    await this.db
      .prepare(`INSERT OR IGNORE INTO outbox (id, time, message) VALUES (?1, ?2, ?3)`)
      .bind(message.event.id, now, JSON.stringify(message))
      .run();
  }

  /**
   * Sends up to `limit` kept events (oldest first) in one batch and forgets them; returns
   * how many. Sent but not forgotten (D1 failing in between) means sent twice: the event's
   * id lets receivers drop the copy.
   */
  async drain(queue: Queue, limit = 100): Promise<number> {
    const { results } = await this.db
      .prepare(`SELECT id, message FROM outbox ORDER BY time LIMIT ?1`)
      .bind(limit)
      .all<{ id: string; message: string }>();
    if (results.length === 0) return 0;
    const messages: EventMessage[] = [];
    for (const row of results) {
      const parsed: unknown = JSON.parse(row.message);
      if (isEventMessage(parsed)) messages.push(parsed);
      else console.error("outbox: dropping a row that is no event", row.id);
    }
    if (messages.length > 0) await queue.sendBatch(messages.map((body) => ({ body, contentType: "json" as const })));
    const forget = this.db.prepare(`DELETE FROM outbox WHERE id = ?1`);
    await this.db.batch(results.map((row) => forget.bind(row.id)));
    return results.length;
  }
}
