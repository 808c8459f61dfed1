/**
 * The bytes of an upload past its last whole R2 part, kept in the upload's Durable
 * Object storage (SQLite) between requests.
 *
 * Why here and not in an R2 object: a tail object has to be rewritten whole on every
 * request that adds to it, so an upload sent in small chunks rewrote up to a part's
 * worth of bytes per chunk (quadratic per part). Rows are append-only: each byte is
 * written here once, and the rows are written in the same storage transaction as the
 * session's offset and hash state, so the two can never disagree.
 */
export class StagedTail {
  /** SQLite rows (and Durable Object values) are limited to 2 MB; stay well under. */
  static readonly ROW_BYTES = 1024 * 1024;

  constructor(private readonly sql: SqlStorage) {}

  /** The table comes back after `deleteAll()` wiped the object's storage. */
  private ensureTable(): void {
    this.sql.exec("CREATE TABLE IF NOT EXISTS tail (position INTEGER PRIMARY KEY, bytes BLOB NOT NULL)");
  }

  /** Appends `bytes`, the upload's bytes starting at absolute offset `position`. */
  append(position: number, bytes: Uint8Array): void {
    this.ensureTable();
    for (let offset = 0; offset < bytes.byteLength; offset += StagedTail.ROW_BYTES) {
      const row = bytes.subarray(offset, offset + StagedTail.ROW_BYTES);
      this.sql.exec("INSERT OR REPLACE INTO tail (position, bytes) VALUES (?, ?)", position + offset, row);
    }
  }

  /**
   * Copies the staged bytes from absolute offset `from` (a part boundary) into
   * `target`; returns how many bytes were found.
   */
  readInto(from: number, target: Uint8Array): number {
    this.ensureTable();
    let filled = 0;
    for (const row of this.sql.exec<{ position: number; bytes: ArrayBuffer }>(
      "SELECT position, bytes FROM tail WHERE position >= ? ORDER BY position",
      from,
    )) {
      const bytes = new Uint8Array(row.bytes);
      if (row.position !== from + filled || filled + bytes.byteLength > target.byteLength) break;
      target.set(bytes, filled);
      filled += bytes.byteLength;
    }
    return filled;
  }

  /** Drops every row (the upload's bytes are all in R2 now). */
  clear(): void {
    this.ensureTable();
    this.sql.exec("DELETE FROM tail");
  }

  /** Drops rows before `position` (bytes that are now in a completed part). */
  prune(position: number): void {
    this.ensureTable();
    this.sql.exec("DELETE FROM tail WHERE position < ?", position);
  }
}
