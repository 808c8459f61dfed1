import { d1Call } from "./d1";
import { meterOnEnv, type Meter } from "./meter";

/**
 * The pull records' table in D1 (AUDIT, migrations/0004_pulls.sql): per repository and
 * manifest digest, when it was last pulled and how many pulls were counted. Written by
 * the pull recorder (pull-recorder.ts) after the answers, read by a repository's web page
 * and by garbage collection (RETENTION `pulledWithin`). The one module that knows the
 * table (docs/architecture.md, "Pull records").
 */

/** Pulls one write adds to a manifest's row. */
export interface PullCount {
  repository: string;
  digest: string;
  /** The latest of those pulls (ms since the epoch). */
  time: number;
  count: number;
}

/** A manifest's row: when it was last pulled (ms) and how many pulls were counted. */
export interface PullRecord {
  lastPulled: number;
  pulls: number;
}

/** A row as a listing of the whole table gives it (the collector's). */
export interface ListedPull {
  repository: string;
  digest: string;
  lastPulled: number;
}

/** D1 binds at most 100 parameters per query: rows per upsert, and manifests per delete. */
const ROWS_PER_UPSERT = 25;
const ROWS_PER_DELETE = 50;

/** Its D1 calls (registry/d1.ts). */
const D1_AREA = { prefix: "pulls", what: "the pull records" };

export class PullRecords {
  /** `meter`: the request's, for Server-Timing (`d1`), when the caller has it. */
  constructor(
    private readonly db: D1Database,
    private readonly meter?: Meter,
  ) {}

  private call<T>(operation: string, work: () => Promise<T>): Promise<T> {
    return d1Call(D1_AREA, operation, work, this.meter);
  }

  /**
   * Forgets deleted manifests and adds counted pulls, in one D1 call: a delete per
   * ROWS_PER_DELETE forgotten manifests first (a manifest pushed again after its deletion
   * starts afresh), then an upsert per ROWS_PER_UPSERT counts (the count added, the later
   * time kept).
   */
  async write(
    counts: readonly PullCount[],
    forgotten: readonly { repository: string; digest: string }[] = [],
  ): Promise<void> {
    const statements: D1PreparedStatement[] = [];
    for (let start = 0; start < forgotten.length; start += ROWS_PER_DELETE) {
      const chunk = forgotten.slice(start, start + ROWS_PER_DELETE);
      statements.push(
        this.db
          .prepare(`DELETE FROM pulls WHERE (repository, digest) IN (VALUES ${chunk.map(() => "(?, ?)").join(", ")})`)
          .bind(...chunk.flatMap(({ repository, digest }) => [repository, digest])),
      );
    }
    for (let start = 0; start < counts.length; start += ROWS_PER_UPSERT) {
      const chunk = counts.slice(start, start + ROWS_PER_UPSERT);
      statements.push(
        this.db
          .prepare(
            `INSERT INTO pulls (repository, digest, last_pulled, pulls) VALUES ${chunk.map(() => "(?, ?, ?, ?)").join(", ")}
             ON CONFLICT (repository, digest) DO UPDATE SET
               last_pulled = max(last_pulled, excluded.last_pulled), pulls = pulls + excluded.pulls`,
          )
          .bind(...chunk.flatMap((row) => [row.repository, row.digest, row.time, row.count])),
      );
    }
    if (statements.length === 0) return;
    await this.call("write", () => this.db.batch(statements));
  }

  /** The records of `digests` in `repository` (one query, the digests passed as one JSON parameter). */
  async of(repository: string, digests: readonly string[]): Promise<Map<string, PullRecord>> {
    const records = new Map<string, PullRecord>();
    if (digests.length === 0) return records;
    const statement = this.db
      .prepare(
        `SELECT digest, last_pulled, pulls FROM pulls
         WHERE repository = ? AND digest IN (SELECT value FROM json_each(?))`,
      )
      .bind(repository, JSON.stringify([...new Set(digests)]));
    const { results } = await this.call("read", () =>
      statement.all<{ digest: string; last_pulled: number; pulls: number }>(),
    );
    for (const row of results) records.set(row.digest, { lastPulled: row.last_pulled, pulls: row.pulls });
    return records;
  }

  /** At most `limit` rows after `[repository, digest]` in key order (the collector pages through them). */
  async page(after: readonly [string, string] | null, limit: number): Promise<ListedPull[]> {
    const [repository, digest] = after ?? ["", ""];
    const statement = this.db
      .prepare(
        `SELECT repository, digest, last_pulled FROM pulls WHERE (repository, digest) > (?, ?)
         ORDER BY repository, digest LIMIT ?`,
      )
      .bind(repository, digest, limit);
    const { results } = await this.call("list", () =>
      statement.all<{ repository: string; digest: string; last_pulled: number }>(),
    );
    return results.map((row) => ({ repository: row.repository, digest: row.digest, lastPulled: row.last_pulled }));
  }
}

/** The pull records of the environment's AUDIT database. */
export function pullRecordsOf(env: Env): PullRecords {
  return new PullRecords(env.AUDIT, meterOnEnv(env));
}
