import type { RegistryEvent } from "../events/event";
import { d1Call } from "../registry/d1";
import type { Meter } from "../registry/meter";

/**
 * The audit log's table in D1 (migrations/0001_audit.sql): events appended, read newest
 * first with keyset pagination on (time, seq), and pruned by age. The one module that
 * knows the table; the layers above use audit.ts.
 */

/** What a query asks for: every field optional; `before` continues after a page. */
export interface AuditFilter {
  repository?: string;
  /** The actor's name (a user name, `collector`, `mirror`). */
  actor?: string;
  /** An action (`tag.delete`), or a family of them ending in `.*` (`login.*`, `tag.*`). */
  action?: string;
  /** Rows at or after this time (ms since the epoch). */
  since?: number;
  /** Rows before this time (ms since the epoch). */
  until?: number;
  /** Where the previous page ended (decoded from its cursor). */
  before?: AuditPosition;
  limit: number;
}

/** A row's place in the log's order: newest first by time, then by insertion order. */
export interface AuditPosition {
  time: number;
  seq: number;
}

/** A page of a query: the events, and where the next page starts (absent at the end). */
export interface AuditPage {
  events: RegistryEvent[];
  next?: AuditPosition;
}

/** The columns an event fills, in the order the INSERT names them. */
const COLUMNS = [
  "id",
  "time",
  "action",
  "repository",
  "digest",
  "media_type",
  "size",
  "tags",
  "detail",
  "actor_kind",
  "actor",
  "address",
  "user_agent",
  "request_id",
] as const;

/** D1 binds at most 100 parameters per query: this many rows per INSERT. */
const ROWS_PER_INSERT = Math.floor(100 / COLUMNS.length);

/** Rows each prune statement deletes, and statements per prune (one cron run). */
const PRUNE_BATCH = 2000;
const PRUNE_STEPS = 20;

/** A D1 call that does not answer in this long is abandoned (it never holds a request). */

/** Longest text kept in a column a client chooses (a user name tried, a user agent). */
const MAX_TEXT = 512;

type Row = Record<(typeof COLUMNS)[number] | "seq", string | number | null>;

function clip(text: string | undefined): string | null {
  return text === undefined ? null : text.slice(0, MAX_TEXT);
}

function valuesOf(event: RegistryEvent): (string | number | null)[] {
  const row: Record<(typeof COLUMNS)[number], string | number | null> = {
    id: event.id,
    time: event.time,
    action: event.action,
    repository: event.repository ?? null,
    digest: event.digest ?? null,
    media_type: clip(event.mediaType),
    size: event.size ?? null,
    tags: event.tags ? JSON.stringify(event.tags) : null,
    detail: event.detail ? JSON.stringify(event.detail) : null,
    actor_kind: event.actor.kind,
    actor: clip(event.actor.name) ?? "",
    address: clip(event.address),
    user_agent: clip(event.userAgent),
    request_id: clip(event.requestId),
  };
  return COLUMNS.map((column) => row[column]);
}

function text(value: string | number | null | undefined): string | undefined {
  return typeof value === "string" ? value : undefined;
}

function parsed<T>(value: string | number | null | undefined): T | undefined {
  if (typeof value !== "string") return undefined;
  try {
    return JSON.parse(value) as T;
  } catch {
    return undefined;
  }
}

function eventOfRow(row: Row): RegistryEvent {
  const event: RegistryEvent = {
    id: String(row.id),
    time: Number(row.time),
    action: String(row.action),
    actor: { kind: String(row.actor_kind), name: String(row.actor) },
  };
  const optional: Partial<RegistryEvent> = {
    repository: text(row.repository),
    digest: text(row.digest),
    mediaType: text(row.media_type),
    size: typeof row.size === "number" ? row.size : undefined,
    tags: parsed<string[]>(row.tags),
    detail: parsed<Record<string, string | number>>(row.detail),
    address: text(row.address),
    userAgent: text(row.user_agent),
    requestId: text(row.request_id),
  };
  for (const [key, value] of Object.entries(optional)) if (value !== undefined) Object.assign(event, { [key]: value });
  return event;
}

/** Its D1 calls (registry/d1.ts). */
const D1_AREA = { prefix: "audit", what: "the audit log" };

export class AuditLog {
  /** `meter`: the request's, for Server-Timing (`d1`), when the caller has it. */
  constructor(
    private readonly db: D1Database,
    private readonly meter?: Meter,
  ) {}

  private call<T>(operation: string, work: () => Promise<T>): Promise<T> {
    return d1Call(D1_AREA, operation, work, this.meter);
  }

  /** Appends events in one D1 call: a multi-row INSERT per ROWS_PER_INSERT events, batched. */
  async append(events: readonly RegistryEvent[]): Promise<void> {
    if (events.length === 0) return;
    const statements: D1PreparedStatement[] = [];
    for (let start = 0; start < events.length; start += ROWS_PER_INSERT) {
      const chunk = events.slice(start, start + ROWS_PER_INSERT);
      const placeholders = chunk.map(() => `(${COLUMNS.map(() => "?").join(", ")})`).join(", ");
      statements.push(
        this.db
          .prepare(`INSERT INTO audit (${COLUMNS.join(", ")}) VALUES ${placeholders}`)
          .bind(...chunk.flatMap(valuesOf)),
      );
    }
    await this.call("append", () => this.db.batch(statements));
  }

  /** One page of what `filter` matches, newest first: one D1 query. */
  async query(filter: AuditFilter): Promise<AuditPage> {
    const conditions: string[] = [];
    const values: (string | number)[] = [];
    if (filter.repository !== undefined) {
      conditions.push("repository = ?");
      values.push(filter.repository);
    }
    if (filter.actor !== undefined) {
      conditions.push("actor = ?");
      values.push(filter.actor);
    }
    if (filter.action !== undefined) {
      if (filter.action.endsWith(".*")) {
        const family = filter.action.slice(0, -1);
        conditions.push("substr(action, 1, ?) = ?");
        values.push(family.length, family);
      } else {
        conditions.push("action = ?");
        values.push(filter.action);
      }
    }
    if (filter.since !== undefined) {
      conditions.push("time >= ?");
      values.push(filter.since);
    }
    if (filter.until !== undefined) {
      conditions.push("time < ?");
      values.push(filter.until);
    }
    if (filter.before !== undefined) {
      conditions.push("(time < ? OR (time = ? AND seq < ?))");
      values.push(filter.before.time, filter.before.time, filter.before.seq);
    }
    const where = conditions.length > 0 ? `WHERE ${conditions.join(" AND ")}` : "";
    // One row more than the page: the next page exists exactly when it comes back.
    const statement = this.db
      .prepare(`SELECT seq, ${COLUMNS.join(", ")} FROM audit ${where} ORDER BY time DESC, seq DESC LIMIT ?`)
      .bind(...values, filter.limit + 1);
    const { results } = await this.call("query", () => statement.all<Row>());
    const rows = results.slice(0, filter.limit);
    const last = rows.at(-1);
    return {
      events: rows.map(eventOfRow),
      ...(results.length > filter.limit && last ? { next: { time: Number(last.time), seq: Number(last.seq) } } : {}),
    };
  }

  /**
   * Deletes rows older than `cutoff` (ms), oldest first, in statements of PRUNE_BATCH rows,
   * at most PRUNE_STEPS of them: a backlog larger than that is left for the next run.
   * Returns the number deleted.
   */
  async prune(cutoff: number): Promise<number> {
    let deleted = 0;
    for (let step = 0; step < PRUNE_STEPS; step++) {
      const statement = this.db
        .prepare("DELETE FROM audit WHERE seq IN (SELECT seq FROM audit WHERE time < ? ORDER BY time LIMIT ?)")
        .bind(cutoff, PRUNE_BATCH);
      const result = await this.call("prune", () => statement.run());
      deleted += result.meta.changes;
      if (result.meta.changes < PRUNE_BATCH) break;
    }
    return deleted;
  }
}
