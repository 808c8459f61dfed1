/**
 * One namespace's usage, as its NamespaceUsage Durable Object keeps it in SQLite: which
 * repository holds which blob (a layer link or a manifest revision, `holds`), each blob's
 * size once however many repositories of the namespace link it (`blobs`), and the total.
 * Everything here is synchronous SQLite work, so each call is atomic in its object: a
 * check and its reservation cannot interleave with another push's.
 *
 * A hold is `linked` once its link is written (the seam's listener said so, or a count
 * listed it), and `reserved` while pushes that reserved it are in flight (the seam's
 * policy let them through and the listener has not yet been told). Either keeps its blob
 * counted; a blob no hold names is not.
 */

/** A repository's link to a blob, as the registry's layout has them. */
export type LinkKind = "layer" | "revision";

export interface HoldKey {
  repository: string;
  kind: LinkKind;
  digest: string;
}

export interface Claim extends HoldKey {
  size: number;
}

/**
 * What a check against the limit found: `fits` (let through; reserved when asked), `over`
 * the limit, or (the object's own answer) `counting` while the namespace is being counted.
 * `used`: the namespace's usage before the claim.
 */
export interface ClaimAnswer {
  verdict: "fits" | "over" | "counting";
  used: number;
}

export interface RepositoryUsage {
  name: string;
  /** The distinct blobs it links, each once: shared ones count in every repository that links them. */
  bytes: number;
}

const USED = "used";

export class UsageLedger {
  constructor(
    private readonly sql: SqlStorage,
    private readonly kv: SyncKvStorage,
  ) {
    sql.exec(`CREATE TABLE IF NOT EXISTS holds (repository TEXT NOT NULL, kind TEXT NOT NULL, digest TEXT NOT NULL,
      linked INTEGER NOT NULL, reserved INTEGER NOT NULL, reserved_at INTEGER NOT NULL,
      PRIMARY KEY (repository, kind, digest)) WITHOUT ROWID`);
    sql.exec(`CREATE INDEX IF NOT EXISTS holds_in_flight ON holds (reserved_at) WHERE reserved > 0`);
    sql.exec(`CREATE TABLE IF NOT EXISTS blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL,
      holds INTEGER NOT NULL) WITHOUT ROWID`);
  }

  /** Bytes of the blobs the namespace holds (linked or reserved), each once. */
  get used(): number {
    return this.kv.get<number>(USED) ?? 0;
  }

  /** Whether some repository of the namespace holds the blob already (it then costs nothing more). */
  holdsBlob(digest: string): boolean {
    return this.sql.exec(`SELECT 1 FROM blobs WHERE digest = ?`, digest).toArray().length > 0;
  }

  /** A blob's size as recorded, or null when the namespace does not hold it. */
  sizeOf(digest: string): number | null {
    const row = this.sql.exec<{ size: number }>(`SELECT size FROM blobs WHERE digest = ?`, digest).toArray()[0];
    return row ? row.size : null;
  }

  /**
   * Whether `claim` fits under `limit`: a blob the namespace holds costs nothing, another
   * its size. With `reserve`, a claim that fits is held at once (reserved), so the next
   * check counts it.
   */
  claim(claim: Claim, limit: number, reserve: boolean, now: number): ClaimAnswer {
    const used = this.used;
    const charged = this.holdsBlob(claim.digest) ? 0 : claim.size;
    if (charged > 0 && used + charged > limit) return { verdict: "over", used };
    if (reserve) this.hold(claim, { reserved: 1, linked: 0 }, now);
    return { verdict: "fits", used };
  }

  /** The link is written (the listener was told, or a count listed it): held for good. */
  linked(claim: Claim, fromReservation: boolean): void {
    const row = this.row(claim);
    if (!row) {
      this.hold(claim, { reserved: 0, linked: 1 }, 0);
      return;
    }
    const reserved = fromReservation ? Math.max(0, row.reserved - 1) : row.reserved;
    this.sql.exec(
      `UPDATE holds SET linked = 1, reserved = ? WHERE repository = ? AND kind = ? AND digest = ?`,
      reserved,
      claim.repository,
      claim.kind,
      claim.digest,
    );
  }

  /**
   * A reservation given back (the push was refused later, or its write failed): `present`
   * says whether the link is in R2 all the same (a write that failed after writing it).
   */
  release(key: HoldKey, present: boolean): void {
    const row = this.row(key);
    if (!row) return;
    const reserved = Math.max(0, row.reserved - 1);
    const linked = row.linked === 1 || present;
    if (!linked && reserved === 0) {
      this.drop(key);
      return;
    }
    this.sql.exec(
      `UPDATE holds SET linked = ?, reserved = ? WHERE repository = ? AND kind = ? AND digest = ?`,
      linked ? 1 : 0,
      reserved,
      key.repository,
      key.kind,
      key.digest,
    );
  }

  /** The link was removed (a delete, the collector): the hold goes, and the blob with its last hold. */
  unlinked(key: HoldKey): void {
    const row = this.row(key);
    if (!row) return;
    if (row.reserved > 0) {
      this.sql.exec(
        `UPDATE holds SET linked = 0 WHERE repository = ? AND kind = ? AND digest = ?`,
        key.repository,
        key.kind,
        key.digest,
      );
      return;
    }
    this.drop(key);
  }

  /** A reservation nobody came back for by `before` (its Worker ended between check and write): settled by R2. */
  settle(key: HoldKey, present: boolean): void {
    const row = this.row(key);
    if (!row || row.reserved === 0) return;
    if (!present && row.linked === 0) {
      this.drop(key);
      return;
    }
    this.sql.exec(
      `UPDATE holds SET linked = 1, reserved = 0 WHERE repository = ? AND kind = ? AND digest = ?`,
      key.repository,
      key.kind,
      key.digest,
    );
  }

  /** Reservations made before `before`, at most `limit` of them. */
  staleReservations(before: number, limit: number): HoldKey[] {
    return this.sql
      .exec<{ repository: string; kind: LinkKind; digest: string }>(
        `SELECT repository, kind, digest FROM holds WHERE reserved > 0 AND reserved_at < ? LIMIT ?`,
        before,
        limit,
      )
      .toArray();
  }

  /** Holds reserved and not yet linked or given back. */
  reservations(): number {
    return this.sql.exec<{ n: number }>(`SELECT count(*) AS n FROM holds WHERE reserved > 0`).one().n;
  }

  /** Forgets everything (a recount starts from nothing). */
  reset(): void {
    this.sql.exec(`DELETE FROM holds`);
    this.sql.exec(`DELETE FROM blobs`);
    this.kv.put(USED, 0);
  }

  /**
   * What each repository holds, largest first (at most `limit`), or only `repository`'s.
   * One pass over the holds: the pages and the admin endpoint, not pushes.
   */
  repositories(limit: number, repository?: string): RepositoryUsage[] {
    const where = repository === undefined ? "" : "WHERE repository = ?";
    const rows = this.sql.exec<{ name: string; bytes: number }>(
      `SELECT held.repository AS name, sum(blobs.size) AS bytes
         FROM (SELECT DISTINCT repository, digest FROM holds ${where}) AS held
         JOIN blobs ON blobs.digest = held.digest
        GROUP BY held.repository ORDER BY bytes DESC, name LIMIT ?`,
      ...(repository === undefined ? [] : [repository]),
      limit,
    );
    return rows.toArray();
  }

  /** How many repositories hold anything. */
  repositoryCount(): number {
    return this.sql.exec<{ n: number }>(`SELECT count(DISTINCT repository) AS n FROM holds`).one().n;
  }

  private row(key: HoldKey): { linked: number; reserved: number } | undefined {
    return this.sql
      .exec<{ linked: number; reserved: number }>(
        `SELECT linked, reserved FROM holds WHERE repository = ? AND kind = ? AND digest = ?`,
        key.repository,
        key.kind,
        key.digest,
      )
      .toArray()[0];
  }

  /** Adds to a hold (or makes it), counting its blob when it is the blob's first. */
  private hold(claim: Claim, add: { reserved: number; linked: number }, now: number): void {
    const row = this.row(claim);
    if (row) {
      this.sql.exec(
        `UPDATE holds SET reserved = reserved + ?, linked = max(linked, ?), reserved_at = max(reserved_at, ?)
          WHERE repository = ? AND kind = ? AND digest = ?`,
        add.reserved,
        add.linked,
        now,
        claim.repository,
        claim.kind,
        claim.digest,
      );
      return;
    }
    this.sql.exec(
      `INSERT INTO holds (repository, kind, digest, linked, reserved, reserved_at) VALUES (?, ?, ?, ?, ?, ?)`,
      claim.repository,
      claim.kind,
      claim.digest,
      add.linked,
      add.reserved,
      now,
    );
    const blob = this.sql.exec(`SELECT 1 FROM blobs WHERE digest = ?`, claim.digest).toArray()[0];
    if (blob) {
      this.sql.exec(`UPDATE blobs SET holds = holds + 1 WHERE digest = ?`, claim.digest);
      return;
    }
    this.sql.exec(`INSERT INTO blobs (digest, size, holds) VALUES (?, ?, 1)`, claim.digest, claim.size);
    this.kv.put(USED, this.used + claim.size);
  }

  /** Removes a hold, and its blob's count with the blob's last hold. */
  private drop(key: HoldKey): void {
    this.sql.exec(
      `DELETE FROM holds WHERE repository = ? AND kind = ? AND digest = ?`,
      key.repository,
      key.kind,
      key.digest,
    );
    const blob = this.sql
      .exec<{ size: number; holds: number }>(`SELECT size, holds FROM blobs WHERE digest = ?`, key.digest)
      .toArray()[0];
    if (!blob) return;
    if (blob.holds > 1) {
      this.sql.exec(`UPDATE blobs SET holds = holds - 1 WHERE digest = ?`, key.digest);
      return;
    }
    this.sql.exec(`DELETE FROM blobs WHERE digest = ?`, key.digest);
    this.kv.put(USED, this.used - blob.size);
  }
}
