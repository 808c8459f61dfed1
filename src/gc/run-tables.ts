import type { ListedTag, ManifestReferences, RepositoryListing } from "./mark";

/**
 * The collector's SQLite tables (its Durable Object's storage), with typed accessors: the
 * run's state, what the scan listed, the marks, what is to be removed and how that went,
 * the condemned blobs, the objects descriptors name, and the report's items. All but
 * `run` and `manifest` are the current run's, emptied when a run starts.
 */

/** What `doomed.done` records of a removal. */
export const RemovalState = {
  pending: 0,
  removed: 1,
  /** Written again since the scan, or gone before the removal began: left alone. */
  unchanged: 2,
  /** Its deletes began: found gone on a retry, it was removed by the earlier attempt. */
  begun: 3,
  /** A change policy refused it: it stays, and so does what it needs. */
  refused: 4,
  /** No longer to be removed: a refusal kept something that needs it. */
  spared: 5,
} as const;
export type RemovalState = (typeof RemovalState)[keyof typeof RemovalState];

export type RemovalKind = "tag" | "manifest" | "link";

/** A removal decide wrote down (a `doomed` row). */
export type Removal = {
  seq: number;
  kind: RemovalKind;
  repo: string;
  /** The tag, for a tag. */
  name: string | null;
  /** A tag's target; the revision's or the link's digest. */
  digest: string;
  /** Its write time when listed: it is removed only if that is unchanged. */
  uploaded: number;
  /** A revision's subject (its referrer record goes with it). */
  subject: string | null;
  done: RemovalState;
};

/** A blob condemned by this run (or a tombstone an earlier run left unfinished). */
export type CondemnedBlob = {
  digest: string;
  /** The descriptor record's etag after the condemnation: the tombstone's condition. */
  etag: string;
  key: string | null;
  size: number;
  /** 1: the record is a tombstone already (the bytes may remain). */
  tombstone: number;
};

export interface ReportItem {
  kind: "tag" | "manifest" | "link" | "blob" | "orphan";
  name: string;
  size: number | null;
}

/** The per-run tables, emptied when a run starts. */
const RUN_TABLES = [
  "tag",
  "rev",
  "link",
  "unreadable",
  "pulled",
  "doomed",
  "marked",
  "condemned",
  "named",
  "item",
  "repo",
];

export class RunTables {
  constructor(private readonly sql: SqlStorage) {
    sql.exec(`CREATE TABLE IF NOT EXISTS run (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL)`);
    // What each manifest references, by digest: immutable, so kept across runs.
    sql.exec(`CREATE TABLE IF NOT EXISTS manifest (digest TEXT PRIMARY KEY, media_type TEXT, subject TEXT,
      children TEXT NOT NULL, blobs TEXT NOT NULL)`);
    sql.exec(`CREATE TABLE IF NOT EXISTS tag (repo TEXT, tag TEXT, digest TEXT, uploaded INTEGER, etag TEXT,
      PRIMARY KEY (repo, tag))`);
    sql.exec(`CREATE TABLE IF NOT EXISTS rev (repo TEXT, digest TEXT, uploaded INTEGER, PRIMARY KEY (repo, digest))`);
    sql.exec(`CREATE TABLE IF NOT EXISTS link (repo TEXT, digest TEXT, uploaded INTEGER, PRIMARY KEY (repo, digest))`);
    sql.exec(`CREATE TABLE IF NOT EXISTS unreadable (repo TEXT, digest TEXT, PRIMARY KEY (repo, digest))`);
    // When a manifest was last pulled, as late as its pull record allows (RETENTION `pulledWithin`).
    sql.exec(`CREATE TABLE IF NOT EXISTS pulled (repo TEXT, digest TEXT, until INTEGER, PRIMARY KEY (repo, digest))`);
    sql.exec(`CREATE TABLE IF NOT EXISTS doomed (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT, repo TEXT,
      name TEXT, digest TEXT, uploaded INTEGER, etag TEXT, subject TEXT, done INTEGER DEFAULT 0)`);
    sql.exec(`CREATE TABLE IF NOT EXISTS marked (digest TEXT PRIMARY KEY)`);
    sql.exec(`CREATE TABLE IF NOT EXISTS condemned (digest TEXT PRIMARY KEY, etag TEXT, key TEXT, size INTEGER,
      tombstone INTEGER)`);
    sql.exec(`CREATE TABLE IF NOT EXISTS named (key TEXT PRIMARY KEY)`);
    sql.exec(`CREATE TABLE IF NOT EXISTS repo (name TEXT PRIMARY KEY)`);
    sql.exec(`CREATE INDEX IF NOT EXISTS doomed_pending ON doomed (done, seq)`);
    sql.exec(`CREATE INDEX IF NOT EXISTS tag_digest ON tag (digest)`);
    sql.exec(`CREATE INDEX IF NOT EXISTS doomed_repo ON doomed (repo, done)`);
    sql.exec(
      `CREATE TABLE IF NOT EXISTS item (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT, name TEXT, size INTEGER)`,
    );
  }

  private count(query: string, ...bindings: (string | number)[]): number {
    return this.sql.exec<{ n: number }>(query, ...bindings).one().n;
  }

  // ---- the run's state (JSON) ----

  loadState(): string | null {
    return this.sql.exec<{ state: string }>(`SELECT state FROM run WHERE id = 1`).toArray()[0]?.state ?? null;
  }

  saveState(state: string): void {
    this.sql.exec(`INSERT OR REPLACE INTO run (id, state) VALUES (1, ?)`, state);
  }

  /** Empties the per-run tables (the manifest references stay). */
  clear(): void {
    for (const table of RUN_TABLES) this.sql.exec(`DELETE FROM ${table}`);
  }

  // ---- scan ----

  addRepository(repo: string): void {
    this.sql.exec(`INSERT OR IGNORE INTO repo VALUES (?)`, repo);
  }

  repositoryCount(): number {
    return this.count(`SELECT COUNT(*) AS n FROM repo`);
  }

  /** Repositories in name order after `after`, at most `limit`. */
  repositoriesAfter(after: string, limit: number): string[] {
    return this.sql
      .exec<{ repo: string }>(`SELECT name AS repo FROM repo WHERE name > ? ORDER BY name LIMIT ?`, after, limit)
      .toArray()
      .map((row) => row.repo);
  }

  addLink(repo: string, digest: string, uploaded: number): void {
    this.sql.exec(`INSERT OR REPLACE INTO link VALUES (?, ?, ?)`, repo, digest, uploaded);
  }

  addRevision(repo: string, digest: string, uploaded: number): void {
    this.sql.exec(`INSERT OR REPLACE INTO rev VALUES (?, ?, ?)`, repo, digest, uploaded);
  }

  /** A tag; `digest` null when the listing did not carry its target (tagsWithoutTarget). */
  addTag(repo: string, tag: string, digest: string | null, uploaded: number, etag: string): void {
    this.sql.exec(`INSERT OR REPLACE INTO tag VALUES (?, ?, ?, ?, ?)`, repo, tag, digest, uploaded, etag);
  }

  tagsWithoutTarget(limit: number): { repo: string; tag: string }[] {
    return this.sql
      .exec<{ repo: string; tag: string }>(`SELECT repo, tag FROM tag WHERE digest IS NULL LIMIT ?`, limit)
      .toArray();
  }

  /** '' for a tag gone or unreadable: it names nothing, and is not read again. */
  setTagTarget(repo: string, tag: string, digest: string): void {
    this.sql.exec(`UPDATE tag SET digest = ? WHERE repo = ? AND tag = ?`, digest, repo, tag);
  }

  /** A manifest's last pull (pull records, for a repository whose rule has `pulledWithin`). */
  addPull(repo: string, digest: string, until: number): void {
    this.sql.exec(`INSERT OR REPLACE INTO pulled VALUES (?, ?, ?)`, repo, digest, until);
  }

  // ---- manifests' references ----

  /** Revisions after `[repo, digest]` whose references were never read, in key order. */
  revisionsToRead(afterRepo: string, afterDigest: string, limit: number): { repo: string; digest: string }[] {
    // Row values walk the primary key's index: each step reads only its own batch.
    return this.sql
      .exec<{ repo: string; digest: string }>(
        `SELECT repo, digest FROM rev WHERE (repo, digest) > (?, ?) AND digest NOT IN (SELECT digest FROM manifest)
         ORDER BY repo, digest LIMIT ?`,
        afterRepo,
        afterDigest,
        limit,
      )
      .toArray();
  }

  /** A revision whose bytes are gone: kept, and its repository loses no links this run. */
  addUnreadable(repo: string, digest: string): void {
    this.sql.exec(`INSERT OR IGNORE INTO unreadable VALUES (?, ?)`, repo, digest);
  }

  remember(digest: string, references: ManifestReferences): void {
    this.sql.exec(
      `INSERT OR REPLACE INTO manifest VALUES (?, ?, ?, ?, ?)`,
      digest,
      references.mediaType,
      references.subject,
      JSON.stringify(references.children),
      JSON.stringify(references.blobs),
    );
  }

  references(digest: string): ManifestReferences | null {
    const row = this.sql
      .exec<{ media_type: string | null; subject: string | null; children: string; blobs: string }>(
        `SELECT media_type, subject, children, blobs FROM manifest WHERE digest = ?`,
        digest,
      )
      .toArray()[0];
    return row ? referencesOf(row) : null;
  }

  // ---- decide ----

  /** One repository as the scan listed it, with what is known of its manifests (markRepository's input). */
  listing(repo: string): RepositoryListing & { tags: (ListedTag & { etag: string })[] } {
    const tags = this.sql
      .exec<{ tag: string; digest: string; uploaded: number; etag: string; until: number | null }>(
        `SELECT tag.tag, tag.digest, tag.uploaded, tag.etag, pulled.until FROM tag
         LEFT JOIN pulled ON pulled.repo = tag.repo AND pulled.digest = tag.digest WHERE tag.repo = ?`,
        repo,
      )
      .toArray()
      .map(({ until, ...tag }) => (until === null ? tag : { ...tag, lastPull: until }));
    const revisions = this.sql
      .exec<{
        digest: string;
        uploaded: number;
        media_type: string | null;
        subject: string | null;
        children: string | null;
        blobs: string | null;
      }>(
        `SELECT rev.digest, rev.uploaded, m.media_type, m.subject, m.children, m.blobs FROM rev
         LEFT JOIN manifest m ON m.digest = rev.digest WHERE rev.repo = ?`,
        repo,
      )
      .toArray()
      .map((row) => ({
        digest: row.digest,
        uploaded: row.uploaded,
        references:
          row.children === null || row.blobs === null
            ? null
            : referencesOf({ ...row, children: row.children, blobs: row.blobs }),
      }));
    const links = this.sql
      .exec<{ digest: string; uploaded: number }>(`SELECT digest, uploaded FROM link WHERE repo = ?`, repo)
      .toArray();
    const unsure = this.count(`SELECT COUNT(*) AS n FROM unreadable WHERE repo = ?`, repo) > 0;
    return { tags, revisions, links, unsure };
  }

  markInUse(digests: Iterable<string>): void {
    for (const digest of digests) this.sql.exec(`INSERT OR IGNORE INTO marked VALUES (?)`, digest);
  }

  isInUse(digest: string): boolean {
    return this.count(`SELECT COUNT(*) AS n FROM marked WHERE digest = ?`, digest) > 0;
  }

  doomTag(repo: string, tag: string, digest: string, uploaded: number, etag: string): void {
    this.sql.exec(
      `INSERT INTO doomed (kind, repo, name, digest, uploaded, etag) VALUES ('tag', ?, ?, ?, ?, ?)`,
      repo,
      tag,
      digest,
      uploaded,
      etag,
    );
  }

  doomManifest(repo: string, mediaType: string | null, digest: string, uploaded: number, subject: string | null): void {
    this.sql.exec(
      `INSERT INTO doomed (kind, repo, name, digest, uploaded, subject) VALUES ('manifest', ?, ?, ?, ?, ?)`,
      repo,
      mediaType,
      digest,
      uploaded,
      subject,
    );
  }

  doomLink(repo: string, digest: string, uploaded: number): void {
    this.sql.exec(`INSERT INTO doomed (kind, repo, digest, uploaded) VALUES ('link', ?, ?, ?)`, repo, digest, uploaded);
  }

  // ---- prune and check ----

  /** Removals not yet done, in decide's order (those begun by a failed step after the rest). */
  pendingRemovals(limit: number): Removal[] {
    return this.sql
      .exec<Removal>(
        `SELECT seq, kind, repo, name, digest, uploaded, subject, done FROM doomed WHERE done IN (0, 3)
         ORDER BY done, seq LIMIT ?`,
        limit,
      )
      .toArray();
  }

  setRemovalState(seq: number, state: RemovalState): void {
    this.sql.exec(`UPDATE doomed SET done = ? WHERE seq = ?`, state, seq);
  }

  /** A repository's removals in `state`. */
  removalsIn(repo: string, state: RemovalState): Removal[] {
    return this.sql
      .exec<Removal>(
        `SELECT seq, kind, repo, name, digest, uploaded, subject, done FROM doomed WHERE repo = ? AND done = ?`,
        repo,
        state,
      )
      .toArray();
  }

  /** Repositories after `after` with something removed, in name order. */
  prunedRepositoriesAfter(after: string, limit: number): string[] {
    return this.sql
      .exec<{ repo: string }>(
        `SELECT DISTINCT repo FROM doomed WHERE done = 1 AND repo > ? ORDER BY repo LIMIT ?`,
        after,
        limit,
      )
      .toArray()
      .map((row) => row.repo);
  }

  // ---- condemn, confirm, reclaim ----

  condemn(blob: CondemnedBlob): void {
    this.sql.exec(
      `INSERT OR REPLACE INTO condemned VALUES (?, ?, ?, ?, ?)`,
      blob.digest,
      blob.etag,
      blob.key,
      blob.size,
      blob.tombstone,
    );
  }

  /** A condemned blob found linked again is spared (a tombstone found earlier is not). */
  spare(digest: string): void {
    this.sql.exec(`DELETE FROM condemned WHERE digest = ? AND tombstone = 0`, digest);
  }

  /** Done with a condemned blob (reclaimed, or not this run's to reclaim). */
  forget(digest: string): void {
    this.sql.exec(`DELETE FROM condemned WHERE digest = ?`, digest);
  }

  hasCondemned(): boolean {
    return this.count(`SELECT COUNT(*) AS n FROM condemned WHERE tombstone = 0`) > 0;
  }

  condemnedBatch(limit: number): CondemnedBlob[] {
    return this.sql
      .exec<CondemnedBlob>(`SELECT digest, etag, key, size, tombstone FROM condemned ORDER BY digest LIMIT ?`, limit)
      .toArray();
  }

  // ---- orphans ----

  /** An object a descriptor names: never an orphan. */
  addNamed(key: string): void {
    this.sql.exec(`INSERT OR IGNORE INTO named VALUES (?)`, key);
  }

  isNamed(key: string): boolean {
    return this.count(`SELECT COUNT(*) AS n FROM named WHERE key = ?`, key) > 0;
  }

  // ---- the report's items ----

  addItem(kind: ReportItem["kind"], name: string, size?: number): void {
    this.sql.exec(`INSERT INTO item (kind, name, size) VALUES (?, ?, ?)`, kind, name, size ?? null);
  }

  items(limit: number): ReportItem[] {
    return this.sql
      .exec<{ kind: ReportItem["kind"]; name: string; size: number | null }>(
        `SELECT kind, name, size FROM item ORDER BY seq LIMIT ?`,
        limit,
      )
      .toArray();
  }
}

function referencesOf(row: {
  media_type: string | null;
  subject: string | null;
  children: string;
  blobs: string;
}): ManifestReferences {
  return {
    mediaType: row.media_type ?? "",
    subject: row.subject,
    children: JSON.parse(row.children) as string[],
    blobs: JSON.parse(row.blobs) as string[],
  };
}
