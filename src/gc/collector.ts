import { DurableObject } from "cloudflare:workers";
import { readConfig } from "../config";
import { digestOf, parseDigest, type Digest } from "../oci/digest";
import { parseManifest } from "../oci/manifest";
import { descriptorMetadata, isBlobDescriptor, type BlobDescriptor } from "../registry/blob-store";
import { splitRepositoryKey } from "../registry/integrity";
import { decodeContent, linkCopyOf } from "../registry/linked-blob-store";
import { Meter, runMetered } from "../registry/meter";
import { Paths } from "../registry/paths";
import { repositoryParts } from "../registry/registry";
import { Referrers } from "../registry/referrers";
import { storageOf, type Storage } from "../registry/storage";
import { parseTagRecord } from "../registry/tags";
import { ruleFor, tagsToRemove } from "./retention";
import { settingsOf } from "../settings/settings";

/**
 * Online garbage collection (docs/architecture.md, "Garbage collection"): one Durable
 * Object (a single instance, so one run at a time) drives a run through its phases in
 * bounded steps, one per alarm, keeping its cursor and its marks in its SQLite storage.
 * A step makes at most a few hundred storage calls (STEP budgets below), far under the
 * per-invocation subrequest limit (1 000 on Free, 10 000 on Paid), and a restart or a
 * failed step resumes from the last saved cursor.
 *
 * Phases, in order:
 * - scan: list every key under `repositories/` (tags, revisions, layer links);
 * - tags, manifests: read what a listing does not say (the target of tags written before
 *   tags carried it in metadata; each manifest's references, read once per digest ever);
 * - decide: per repository, apply retention and compute what is kept (tagged manifests,
 *   what kept indexes list, referrers of kept subjects, untagged ones no rule removes)
 *   and which layer links no kept manifest uses;
 * - prune: remove those tags, revisions and links, each re-checked just before;
 * - check: per pruned repository, put back what a manifest pushed meanwhile needs;
 * - condemn: every blob descriptor no kept link names, older than the grace period, is
 *   condemned (a conditional rewrite: any writer linking it afterwards revives it);
 * - confirm: list every link again (after all condemnations): a linked blob is spared;
 * - reclaim: tombstone each still-condemned descriptor (conditionally on it being
 *   unchanged), delete its KV copy, its bytes, then the tombstone;
 * - orphans: delete `data/` objects nothing names, older than the upload TTL.
 */

export type Phase =
  "scan" | "tags" | "manifests" | "decide" | "prune" | "check" | "condemn" | "confirm" | "reclaim" | "orphans" | "done";

export const PHASES: Phase[] = [
  "scan",
  "tags",
  "manifests",
  "decide",
  "prune",
  "check",
  "condemn",
  "confirm",
  "reclaim",
  "orphans",
  "done",
];

export interface GcOptions {
  dryRun?: boolean;
  /** Blobs and links younger than this are never removed (GC_GRACE_SECONDS by default). */
  graceSeconds?: number;
  trigger?: "admin" | "cron" | "test";
  /** Tests: the size of every step's batch (small, to get many steps). */
  batch?: number;
  /** Tests: false leaves stepping to the caller (no alarms). */
  drive?: boolean;
}

export interface GcCounts {
  repositories: number;
  tags: number;
  manifests: number;
  links: number;
  blobs: number;
  dataObjects: number;
}

export interface GcRemoved {
  tags: number;
  manifests: number;
  links: number;
  blobs: number;
  orphans: number;
}

export interface GcRun {
  id: string;
  status: "running" | "done" | "failed";
  dryRun: boolean;
  graceSeconds: number;
  trigger: string;
  startedAt: string;
  finishedAt?: string;
  phase: Phase;
  /** Items done in the current phase (for progress). */
  phaseDone: number;
  /** The phase's place among all (1-based), and how many there are: a progress bar's figures. */
  phaseNumber: number;
  phaseCount: number;
  steps: number;
  failures: number;
  lastError?: string;
  scanned: GcCounts;
  removed: GcRemoved;
  /** removed.blobs, at the top level (the field scripts read). */
  blobsRemoved: number;
  bytesReclaimed: number;
  /** Storage calls of the whole run, and the most any one step made. */
  operations: { r2: number; r2ClassA: number; kv: number; kvWrites: number };
  maxStepOperations: number;
  /** Longest step (wall time, storage included: an upper bound of its CPU time). */
  maxStepMs: number;
  /** Longest step's time outside storage calls: closer to its CPU time. */
  maxStepComputeMs: number;
  /** What was (or, in a dry run, would be) removed, when asked for (capped at ITEMS_MAX). */
  items?: GcItem[];
  itemsTruncated?: boolean;
}

export interface GcItem {
  kind: "tag" | "manifest" | "link" | "blob" | "orphan";
  name: string;
  size?: number;
}

/** Internal run state: the report plus cursors. */
interface RunState extends Omit<GcRun, "phaseNumber" | "phaseCount" | "blobsRemoved"> {
  startedMs: number;
  cursor?: string;
  batch?: number;
  drive: boolean;
}

/** Per-step budgets (storage calls are at most a small multiple of these). */
const STEP = {
  listPages: 3,
  tagReads: 100,
  manifestReads: 50,
  repositories: 50,
  prune: 40,
  checkRepositories: 5,
  blobPage: 150,
  reclaim: 40,
  // Each unnamed old object costs a head (its quarantine marker): at most this many.
  orphanPage: 200,
};
/** Storage calls in flight at once within a step. */
const IN_FLIGHT = 16;
/** Items kept for the report. */
const ITEMS_MAX = 10_000;
/** Clock slack between the Worker and R2's `uploaded` times. */
const CLOCK_MARGIN_MS = 60_000;
/** Beyond the upload TTL before an unnamed `data/` object is deleted. */
const ORPHAN_MARGIN_MS = 60 * 60_000;
/** Consecutive failed steps after which a run gives up (it can be started again). */
const MAX_FAILURES = 20;
const RETRY_DELAY_MS = 5_000;
const MAX_RETRY_DELAY_MS = 5 * 60_000;
/** Between two steps. */
const STEP_GAP_MS = 5;

const LINK_FAMILIES = new Set(["_layers", "_manifests"]);

function emptyCounts(): GcCounts {
  return { repositories: 0, tags: 0, manifests: 0, links: 0, blobs: 0, dataObjects: 0 };
}

export class GarbageCollector extends DurableObject<Env> {
  private stepping = false;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    const sql = ctx.storage.sql;
    sql.exec(`CREATE TABLE IF NOT EXISTS run (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL)`);
    // What each manifest references, by digest: immutable, so kept across runs.
    sql.exec(`CREATE TABLE IF NOT EXISTS manifest (digest TEXT PRIMARY KEY, media_type TEXT, subject TEXT,
      children TEXT NOT NULL, blobs TEXT NOT NULL)`);
    sql.exec(`CREATE TABLE IF NOT EXISTS tag (repo TEXT, tag TEXT, digest TEXT, uploaded INTEGER, etag TEXT,
      PRIMARY KEY (repo, tag))`);
    sql.exec(`CREATE TABLE IF NOT EXISTS rev (repo TEXT, digest TEXT, uploaded INTEGER, PRIMARY KEY (repo, digest))`);
    sql.exec(`CREATE TABLE IF NOT EXISTS link (repo TEXT, digest TEXT, uploaded INTEGER, PRIMARY KEY (repo, digest))`);
    sql.exec(`CREATE TABLE IF NOT EXISTS unreadable (repo TEXT, digest TEXT, PRIMARY KEY (repo, digest))`);
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

  // ---- the API (RPC from the Worker: routes/admin.ts, the cron trigger, tests) ----

  /** Starts a run, or returns the one running (`started: false`). */
  async start(options: GcOptions = {}): Promise<{ started: boolean; run: GcRun }> {
    const current = this.load();
    if (current?.status === "running") {
      // A run whose alarm was lost (it should not be) is set going again.
      if (current.drive && (await this.ctx.storage.getAlarm()) === null) await this.ctx.storage.setAlarm(Date.now());
      return { started: false, run: this.report(current) };
    }
    const grace = options.graceSeconds ?? gcGraceSeconds(this.env);
    settingsOf(this.env); // a broken RETENTION (or any setting) fails here, before anything runs
    const now = Date.now();
    const state: RunState = {
      id: crypto.randomUUID(),
      status: "running",
      dryRun: options.dryRun ?? false,
      graceSeconds: grace,
      trigger: options.trigger ?? "admin",
      startedAt: new Date(now).toISOString(),
      startedMs: now,
      phase: "scan",
      phaseDone: 0,
      steps: 0,
      failures: 0,
      scanned: emptyCounts(),
      removed: { tags: 0, manifests: 0, links: 0, blobs: 0, orphans: 0 },
      bytesReclaimed: 0,
      operations: { r2: 0, r2ClassA: 0, kv: 0, kvWrites: 0 },
      maxStepOperations: 0,
      maxStepMs: 0,
      maxStepComputeMs: 0,
      drive: options.drive ?? true,
      ...(options.batch ? { batch: options.batch } : {}),
    };
    const sql = this.ctx.storage.sql;
    for (const table of [
      "tag",
      "rev",
      "link",
      "unreadable",
      "doomed",
      "marked",
      "condemned",
      "named",
      "item",
      "repo",
    ]) {
      sql.exec(`DELETE FROM ${table}`);
    }
    // Saved before anything is awaited: a second start finds this run (one at a time).
    this.save(state);
    if (state.drive) await this.ctx.storage.setAlarm(Date.now());
    return { started: true, run: this.report(state) };
  }

  /** The current or last run (null: none ever). */
  async status(options: { items?: boolean } = {}): Promise<GcRun | null> {
    const state = this.load();
    return state ? this.report(state, options.items) : null;
  }

  /** One bounded step of the running run (the alarm's work; tests call it directly). */
  async step(): Promise<GcRun | null> {
    const state = this.load();
    if (!state || state.status !== "running" || this.stepping) return state ? this.report(state) : null;
    this.stepping = true;
    const meter = new Meter();
    const started = performance.now();
    try {
      await runMetered(meter, () => this.advance(state));
      state.failures = 0;
      delete state.lastError;
    } catch (error) {
      state.failures++;
      state.lastError = error instanceof Error ? error.message : String(error);
      // While links are being removed (prune, check), a run never gives up: check must
      // still put back what a concurrent push needs. Before that, a failed run changed nothing.
      // (After check, giving up loses nothing: writers revive what is condemned, and the
      // next run finishes tombstones left part-way.)
      const removing = state.phase === "prune" || state.phase === "check";
      if (state.failures >= MAX_FAILURES && !removing) {
        state.status = "failed";
        state.finishedAt = new Date().toISOString();
        await this.mark(state, "idle").catch(() => undefined);
      }
    } finally {
      this.stepping = false;
    }
    const elapsed = performance.now() - started;
    const totals = meter.totals();
    state.steps++;
    state.operations.r2 += totals.r2;
    state.operations.r2ClassA += totals.r2ClassA;
    state.operations.kv += totals.kv;
    state.operations.kvWrites += totals.kvWrites;
    state.maxStepOperations = Math.max(state.maxStepOperations, totals.r2 + totals.kv);
    state.maxStepMs = Math.max(state.maxStepMs, elapsed);
    state.maxStepComputeMs = Math.max(state.maxStepComputeMs, Math.max(0, elapsed - totals.storageMs));
    this.save(state);
    if (state.status === "running" && state.drive) {
      // Never at the running alarm's own time (the clock stands still in a step without
      // I/O): an alarm set for that instant is dropped when the handler returns.
      const delay =
        state.failures > 0
          ? Math.min(MAX_RETRY_DELAY_MS, RETRY_DELAY_MS * 2 ** Math.min(6, state.failures - 1))
          : STEP_GAP_MS;
      await this.ctx.storage.setAlarm(Date.now() + delay);
    }
    return this.report(state);
  }

  override async alarm(): Promise<void> {
    await this.step();
  }

  // ---- state ----

  private load(): RunState | null {
    const row = this.ctx.storage.sql.exec<{ state: string }>(`SELECT state FROM run WHERE id = 1`).toArray()[0];
    return row ? (JSON.parse(row.state) as RunState) : null;
  }

  private save(state: RunState): void {
    this.ctx.storage.sql.exec(`INSERT OR REPLACE INTO run (id, state) VALUES (1, ?)`, JSON.stringify(state));
  }

  private report(state: RunState, items = false): GcRun {
    const { startedMs, cursor, batch, drive, ...rest } = state;
    const run: GcRun = {
      ...rest,
      blobsRemoved: state.removed.blobs,
      phaseNumber: PHASES.indexOf(state.phase) + 1,
      phaseCount: PHASES.length,
    };
    void startedMs;
    void cursor;
    void batch;
    void drive;
    if (!items) return run;
    const rows = this.ctx.storage.sql
      .exec<{ kind: string; name: string; size: number | null }>(
        `SELECT kind, name, size FROM item ORDER BY seq LIMIT ?`,
        ITEMS_MAX,
      )
      .toArray();
    return {
      ...run,
      items: rows.map((row) => ({
        kind: row.kind as GcItem["kind"],
        name: row.name,
        ...(row.size === null ? {} : { size: row.size }),
      })),
      itemsTruncated: rows.length >= ITEMS_MAX,
    };
  }

  private record(kind: GcItem["kind"], name: string, size?: number): void {
    this.ctx.storage.sql.exec(`INSERT INTO item (kind, name, size) VALUES (?, ?, ?)`, kind, name, size ?? null);
  }

  private next(state: RunState): void {
    const index = PHASES.indexOf(state.phase);
    state.phase = PHASES[index + 1] ?? "done";
    state.phaseDone = 0;
    delete state.cursor;
  }

  /**
   * The run marker (Paths.gcActive) says whether a run may be removing links: written
   * `active` before the scan and `idle` at the end, never deleted, so a manifest PUT that
   * straddles a run's start or end sees it change (Manifests.put). Not in a dry run.
   */
  private async mark(state: RunState, phase: "active" | "idle"): Promise<void> {
    if (state.dryRun) return;
    await storageOf(this.env).bucket.put(Paths.gcActive, JSON.stringify({ run: state.id, state: phase }), {
      customMetadata: { state: phase },
    });
  }

  private batch(state: RunState, size: number): number {
    return state.batch ?? size;
  }

  /** Where the run's cutoff lies: blobs and links written after it are never removed. */
  private cutoff(state: RunState): number {
    return state.startedMs - state.graceSeconds * 1000;
  }

  // ---- the phases ----

  private async advance(state: RunState): Promise<void> {
    const storage = storageOf(this.env);
    switch (state.phase) {
      case "scan":
        return this.scan(state, storage);
      case "tags":
        return this.readTags(state, storage);
      case "manifests":
        return this.readManifests(state);
      case "decide":
        return this.decide(state);
      case "prune":
        return state.dryRun ? this.next(state) : this.prune(state, storage);
      case "check":
        return state.dryRun ? this.next(state) : this.check(state);
      case "condemn":
        return this.condemn(state, storage);
      case "confirm":
        return state.dryRun ? this.next(state) : this.confirm(state, storage);
      case "reclaim":
        return state.dryRun ? this.next(state) : this.reclaim(state, storage);
      case "orphans":
        return this.orphans(state, storage);
      case "done":
        return this.finish(state);
    }
  }

  private async finish(state: RunState): Promise<void> {
    await this.mark(state, "idle");
    state.status = "done";
    state.finishedAt = new Date().toISOString();
    state.scanned.repositories = this.count(`SELECT COUNT(*) AS n FROM repo`);
  }

  private count(query: string, ...bindings: (string | number)[]): number {
    return this.ctx.storage.sql.exec<{ n: number }>(query, ...bindings).one().n;
  }

  /** Lists `repositories/` (a few pages per step) into the tag, rev and link tables. */
  private async scan(state: RunState, storage: Storage): Promise<void> {
    const sql = this.ctx.storage.sql;
    // Before the first listing: a manifest PUT that does not see the run active wrote its
    // revision before the scan lists it (docs/architecture.md, "Garbage collection").
    if (!state.cursor) await this.mark(state, "active");
    for (let page = 0; page < STEP.listPages; page++) {
      const listing = await storage.bucket.list({
        prefix: "repositories/",
        include: ["customMetadata"],
        limit: state.batch ?? 1000,
        ...(state.cursor ? { cursor: state.cursor } : {}),
      });
      for (const object of listing.objects) {
        const parts = splitRepositoryKey(object.key);
        if (!parts || !LINK_FAMILIES.has(parts.family)) continue;
        const uploaded = object.uploaded.getTime();
        sql.exec(`INSERT OR IGNORE INTO repo VALUES (?)`, parts.name);
        const [first = "", second = "", third = ""] = parts.rest;
        if (parts.family === "_layers") {
          const digest = digestText(first, second);
          if (!digest) continue;
          sql.exec(`INSERT OR REPLACE INTO link VALUES (?, ?, ?)`, parts.name, digest, uploaded);
          state.scanned.links++;
        } else if (first === "revisions") {
          const digest = digestText(second, third);
          if (!digest) continue;
          sql.exec(`INSERT OR REPLACE INTO rev VALUES (?, ?, ?)`, parts.name, digest, uploaded);
          state.scanned.manifests++;
        } else if (first === "tags" && parts.rest.length === 2) {
          const target = object.customMetadata?.digest ?? null;
          sql.exec(
            `INSERT OR REPLACE INTO tag VALUES (?, ?, ?, ?, ?)`,
            parts.name,
            second,
            target,
            uploaded,
            object.etag,
          );
          state.scanned.tags++;
        }
      }
      state.phaseDone += listing.objects.length;
      if (!listing.truncated) return this.next(state);
      state.cursor = listing.cursor;
    }
  }

  /** Reads the target of tags whose listing did not carry it (written before tags carried it). */
  private async readTags(state: RunState, storage: Storage): Promise<void> {
    const sql = this.ctx.storage.sql;
    const rows = sql
      .exec<{ repo: string; tag: string }>(
        `SELECT repo, tag FROM tag WHERE digest IS NULL LIMIT ?`,
        this.batch(state, STEP.tagReads),
      )
      .toArray();
    if (rows.length === 0) return this.next(state);
    await inParallel(rows, async ({ repo, tag }) => {
      const object = await storage.bucket.get(Paths.tag(repo, tag));
      const record = object ? parseTagRecord(await object.text()) : null;
      // A tag gone or unreadable names nothing; '' keeps it from being read again.
      sql.exec(`UPDATE tag SET digest = ? WHERE repo = ? AND tag = ?`, record?.digest.value ?? "", repo, tag);
    });
    state.phaseDone += rows.length;
  }

  /** Reads the references of every manifest not read by an earlier run (digests are immutable). */
  private async readManifests(state: RunState): Promise<void> {
    const sql = this.ctx.storage.sql;
    const [afterRepo = "", afterDigest = ""] = parseCursor(state.cursor);
    // Row values walk the primary key's index: each step reads only its own batch.
    const rows = sql
      .exec<{ repo: string; digest: string }>(
        `SELECT repo, digest FROM rev WHERE (repo, digest) > (?, ?) AND digest NOT IN (SELECT digest FROM manifest)
         ORDER BY repo, digest LIMIT ?`,
        afterRepo,
        afterDigest,
        this.batch(state, STEP.manifestReads),
      )
      .toArray();
    if (rows.length === 0) return this.next(state);
    await inParallel(rows, async ({ repo, digest }) => {
      const refs = await readReferences(this.env, repo, parseDigest(digest));
      if (!refs) {
        // Unreadable (its bytes are gone): kept, and its repository loses no links this run.
        sql.exec(`INSERT OR IGNORE INTO unreadable VALUES (?, ?)`, repo, digest);
        return;
      }
      this.remember(digest, refs);
    });
    const last = rows[rows.length - 1];
    if (last) state.cursor = JSON.stringify([last.repo, last.digest]);
    state.phaseDone += rows.length;
  }

  /** Per repository: retention, what is kept, what goes (no storage calls). */
  private async decide(state: RunState): Promise<void> {
    const sql = this.ctx.storage.sql;
    const rules = settingsOf(this.env).gc.retention;
    const after = state.cursor ?? "";
    const repos = sql
      .exec<{ repo: string }>(
        `SELECT name AS repo FROM repo WHERE name > ? ORDER BY name LIMIT ?`,
        after,
        this.batch(state, STEP.repositories),
      )
      .toArray()
      .map((row) => row.repo);
    if (repos.length === 0) return this.next(state);
    const cutoff = this.cutoff(state);
    for (const repo of repos) {
      const tags = sql
        .exec<{ tag: string; digest: string; uploaded: number; etag: string }>(
          `SELECT tag, digest, uploaded, etag FROM tag WHERE repo = ?`,
          repo,
        )
        .toArray();
      const revs = sql
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
        .toArray();
      const links = sql
        .exec<{ digest: string; uploaded: number }>(`SELECT digest, uploaded FROM link WHERE repo = ?`, repo)
        .toArray();
      const unsure = this.count(`SELECT COUNT(*) AS n FROM unreadable WHERE repo = ?`, repo) > 0;
      const rule = ruleFor(rules, repo);
      // A tag whose record was gone or unreadable ('' digest) names nothing: not ranked.
      const removedTags = tagsToRemove(
        rule,
        tags.filter((t) => t.digest !== "").map((t) => ({ tag: t.tag, pushedAt: t.uploaded })),
        state.startedMs,
      );
      const tagged = new Set(tags.filter((t) => !removedTags.has(t.tag)).map((t) => t.digest));
      const untaggedByRule = new Set(tags.filter((t) => removedTags.has(t.tag)).map((t) => t.digest));
      const byDigest = new Map(revs.map((rev) => [rev.digest, rev]));
      const kept = new Set<string>();
      const queue: string[] = [];
      const keep = (digest: string) => {
        if (kept.has(digest) || !byDigest.has(digest)) return;
        kept.add(digest);
        queue.push(digest);
      };
      for (const rev of revs) {
        const removable =
          rev.children !== null &&
          !tagged.has(rev.digest) &&
          (untaggedByRule.has(rev.digest) ||
            (rule?.removeUntaggedOlderThan !== undefined &&
              state.startedMs - rev.uploaded > rule.removeUntaggedOlderThan * 1000 &&
              // Untagged and young: maybe a child pushed before its index (grace, as for links).
              rev.uploaded < cutoff));
        if (!removable) keep(rev.digest);
      }
      // Children of kept indexes, and referrers of kept subjects, to a fixed point.
      for (;;) {
        while (queue.length > 0) {
          const digest = queue.pop() ?? "";
          for (const child of JSON.parse(byDigest.get(digest)?.children ?? "[]") as string[]) keep(child);
        }
        const before = kept.size;
        for (const rev of revs) if (rev.subject && kept.has(rev.subject)) keep(rev.digest);
        if (kept.size === before && queue.length === 0) break;
      }
      // A referrer whose subject goes in this run goes in the next: if a push brings the
      // subject back meanwhile, a PUT's relink (which restores the subject only) keeps it.
      for (const rev of revs)
        if (!kept.has(rev.digest) && rev.subject && byDigest.has(rev.subject)) kept.add(rev.digest);
      const used = new Set<string>();
      for (const digest of kept) {
        for (const blob of JSON.parse(byDigest.get(digest)?.blobs ?? "[]") as string[]) {
          used.add(blob);
          // Even without a link here (lost to a failure): a kept manifest's blob stays.
          sql.exec(`INSERT OR IGNORE INTO marked VALUES (?)`, blob);
        }
        sql.exec(`INSERT OR IGNORE INTO marked VALUES (?)`, digest);
      }
      for (const tag of tags) {
        if (!removedTags.has(tag.tag)) continue;
        sql.exec(
          `INSERT INTO doomed (kind, repo, name, digest, uploaded, etag) VALUES ('tag', ?, ?, ?, ?, ?)`,
          repo,
          tag.tag,
          tag.digest,
          tag.uploaded,
          tag.etag,
        );
        if (state.dryRun) {
          this.record("tag", `${repo}:${tag.tag}`);
          state.removed.tags++;
        }
      }
      for (const rev of revs) {
        if (kept.has(rev.digest)) continue;
        sql.exec(
          `INSERT INTO doomed (kind, repo, name, digest, uploaded, subject) VALUES ('manifest', ?, ?, ?, ?, ?)`,
          repo,
          rev.media_type,
          rev.digest,
          rev.uploaded,
          rev.subject,
        );
        if (state.dryRun) {
          this.record("manifest", `${repo}@${rev.digest}`);
          state.removed.manifests++;
        }
      }
      for (const link of links) {
        if (used.has(link.digest) || unsure || link.uploaded >= cutoff) {
          sql.exec(`INSERT OR IGNORE INTO marked VALUES (?)`, link.digest);
          continue;
        }
        sql.exec(
          `INSERT INTO doomed (kind, repo, digest, uploaded) VALUES ('link', ?, ?, ?)`,
          repo,
          link.digest,
          link.uploaded,
        );
        if (state.dryRun) {
          this.record("link", `${repo}@${link.digest}`);
          state.removed.links++;
        }
      }
    }
    state.cursor = repos[repos.length - 1];
    state.phaseDone += repos.length;
  }

  /** Removes what decide doomed, each re-checked just before (a push may have written it again). */
  private async prune(state: RunState, storage: Storage): Promise<void> {
    const sql = this.ctx.storage.sql;
    const rows = sql
      .exec<{
        seq: number;
        kind: string;
        repo: string;
        name: string | null;
        digest: string;
        uploaded: number;
        etag: string | null;
        subject: string | null;
        done: number;
      }>(
        `SELECT seq, kind, repo, name, digest, uploaded, etag, subject, done FROM doomed WHERE done IN (0, 3)
         ORDER BY done, seq LIMIT ?`,
        this.batch(state, STEP.prune),
      )
      .toArray();
    if (rows.length === 0) return this.next(state);
    const { bucket, kv } = storage;
    // In order: a repository's tags before its revisions before its links (decide's order).
    for (const row of rows) {
      let removed = false;
      // 3: this row's deletes began. Gone on a retry then means removed by the earlier
      // attempt (check must still look at it); gone before they began, by a client.
      const resumed = row.done === 3;
      if (!resumed) sql.exec(`UPDATE doomed SET done = 3 WHERE seq = ?`, row.seq);
      if (row.kind === "tag" && row.name !== null) {
        const key = Paths.tag(row.repo, row.name);
        const head = await bucket.head(key);
        // Compared by write time: an etag is the body's MD5, the same for a tag pushed again.
        if (head ? head.uploaded.getTime() === row.uploaded : resumed) {
          if (head) await bucket.delete(key);
          removed = true;
          state.removed.tags++;
          this.record("tag", `${row.repo}:${row.name}`);
        }
      } else {
        const digest = parseDigest(row.digest);
        const manifest = row.kind === "manifest";
        const key = manifest ? Paths.manifestRevision(row.repo, digest) : Paths.layerLink(row.repo, digest);
        const kvKey = manifest ? Paths.kvManifestRevision(row.repo, digest) : Paths.kvLayerLink(row.repo, digest);
        const head = await bucket.head(key);
        // Written again since the scan (a push, a mount): in use, left alone.
        if (head ? head.uploaded.getTime() === row.uploaded : resumed) {
          if (manifest && row.subject) await bucket.delete(Paths.referrer(row.repo, parseDigest(row.subject), digest));
          // R2 first, then the KV copy: one KV write, not unlink's two (KV writes are the
          // scarce quota: 1 000 a day on Free). A pull that writes the copy again after this
          // finds the link gone and deletes it (LinkedBlobStore.checkCopy); a step failing in
          // between is retried and deletes the copy then (the link counts as removed).
          if (head) await bucket.delete(key);
          await kv.delete(kvKey);
          removed = true;
          if (manifest) state.removed.manifests++;
          else state.removed.links++;
          this.record(manifest ? "manifest" : "link", `${row.repo}@${row.digest}`);
        }
      }
      sql.exec(`UPDATE doomed SET done = ? WHERE seq = ?`, removed ? 1 : 2, row.seq);
    }
    state.phaseDone += rows.length;
  }

  /**
   * Per pruned repository: a manifest written (or a tag set) since the scan may need what
   * was just removed; it is linked again. The other half of this is the manifest PUT's own
   * check while the run's marker exists (Manifests.put); between them, every interleaving
   * is covered (docs/architecture.md).
   */
  private async check(state: RunState): Promise<void> {
    const sql = this.ctx.storage.sql;
    const repos = sql
      .exec<{ repo: string }>(
        `SELECT DISTINCT repo FROM doomed WHERE done = 1 AND repo > ? ORDER BY repo LIMIT ?`,
        state.cursor ?? "",
        this.batch(state, STEP.checkRepositories),
      )
      .toArray()
      .map((row) => row.repo);
    if (repos.length === 0) return this.next(state);
    const since = state.startedMs - CLOCK_MARGIN_MS;
    const storage = storageOf(this.env);
    for (const repo of repos) {
      const removed = sql
        .exec<{ kind: string; digest: string; subject: string | null }>(
          `SELECT kind, digest, subject FROM doomed WHERE repo = ? AND done = 1 AND kind != 'tag'`,
          repo,
        )
        .toArray();
      const removedLinks = new Set(removed.filter((r) => r.kind === "link").map((r) => r.digest));
      const removedRevs = new Set(removed.filter((r) => r.kind === "manifest").map((r) => r.digest));
      if (removedLinks.size === 0 && removedRevs.size === 0) continue;
      const repository = repositoryParts(this.env, repo);
      // Every manifest a new write needs, transitively: what a restored index lists, what a
      // restored manifest references, and the referrers of a restored subject.
      const queue: string[] = [];
      const seen = new Set<string>();
      const need = (digest: string) => {
        if (seen.has(digest)) return;
        seen.add(digest);
        queue.push(digest);
      };
      for await (const object of listAll(storage.bucket, Paths.tagPrefix(repo))) {
        if (object.uploaded.getTime() < since) continue;
        let target = object.customMetadata?.digest;
        if (!target) {
          const record = await storage.bucket.get(object.key);
          target = record ? parseTagRecord(await record.text())?.digest.value : undefined;
        }
        if (target) need(target);
      }
      const revisionsPrefix = `repositories/${repo}/_manifests/revisions/`;
      for await (const object of listAll(storage.bucket, revisionsPrefix)) {
        if (object.uploaded.getTime() < since) continue;
        const [algorithm = "", hex = ""] = object.key.slice(revisionsPrefix.length).split("/");
        const digest = digestText(algorithm, hex);
        if (digest) need(digest);
      }
      while (queue.length > 0) {
        const digest = queue.shift() ?? "";
        const refs = await this.referencesOf(repo, digest);
        if (removedRevs.delete(digest)) {
          await restoreManifest(this.env, repo, parseDigest(digest), refs?.mediaType ?? "");
          for (const row of removed) if (row.kind === "manifest" && row.subject === digest) need(row.digest);
        }
        if (!refs) continue;
        for (const child of refs.children) need(child);
        for (const blob of refs.blobs) {
          if (!removedLinks.delete(blob)) continue;
          const descriptor = await repository.blobs.stat(parseDigest(blob), { strong: true });
          if (descriptor) await repository.layers.link(parseDigest(blob), descriptor);
        }
      }
    }
    state.cursor = repos[repos.length - 1];
    state.phaseDone += repos.length;
  }

  /** A manifest's references: from the table when read before, else read now (and kept). */
  private async referencesOf(repo: string, digest: string): Promise<References | null> {
    const sql = this.ctx.storage.sql;
    const row = sql
      .exec<{ media_type: string | null; subject: string | null; children: string; blobs: string }>(
        `SELECT media_type, subject, children, blobs FROM manifest WHERE digest = ?`,
        digest,
      )
      .toArray()[0];
    if (row) {
      return {
        mediaType: row.media_type ?? "",
        subject: row.subject,
        children: JSON.parse(row.children) as string[],
        blobs: JSON.parse(row.blobs) as string[],
      };
    }
    const refs = await readReferences(this.env, repo, parseDigest(digest));
    if (refs) this.remember(digest, refs);
    return refs;
  }

  private remember(digest: string, refs: References): void {
    this.ctx.storage.sql.exec(
      `INSERT OR REPLACE INTO manifest VALUES (?, ?, ?, ?, ?)`,
      digest,
      refs.mediaType,
      refs.subject,
      JSON.stringify(refs.children),
      JSON.stringify(refs.blobs),
    );
  }

  /**
   * Lists blob descriptors: an unmarked one older than the cutoff is condemned (a
   * conditional rewrite with the mark), a marked one that an earlier run condemned is
   * revived, and every object a descriptor names is remembered for the orphan sweep.
   */
  private async condemn(state: RunState, storage: Storage): Promise<void> {
    const sql = this.ctx.storage.sql;
    const { bucket } = storage;
    const listing = await bucket.list({
      prefix: "blobs/",
      include: ["customMetadata"],
      limit: this.batch(state, STEP.blobPage),
      ...(state.cursor ? { cursor: state.cursor } : {}),
    });
    const cutoff = this.cutoff(state);
    await inParallel(listing.objects, async (object) => {
      const [algorithm = "", hex = ""] = object.key.slice("blobs/".length).split("/");
      const digest = digestText(algorithm, hex);
      if (!digest) return;
      state.scanned.blobs++;
      const meta = object.customMetadata ?? {};
      let descriptor: BlobDescriptor | null = null;
      if (meta.key !== undefined && meta.size !== undefined && Number.isSafeInteger(Number(meta.size))) {
        descriptor = { digest, size: Number(meta.size), key: meta.key };
      } else if (meta.gc !== "tombstone") {
        const record = await bucket.get(object.key);
        const body: unknown = record ? await record.json().catch(() => null) : null;
        descriptor = isBlobDescriptor(body) ? plain(body) : null;
      }
      if (descriptor) sql.exec(`INSERT OR IGNORE INTO named VALUES (?)`, descriptor.key);
      const isMarked = this.count(`SELECT COUNT(*) AS n FROM marked WHERE digest = ?`, digest) > 0;
      if (meta.gc === "tombstone") {
        // Tombstones stay (see reclaim). One whose bytes may remain (a run stopped part-way
        // through it) is finished: a tombstone is absent to every reader.
        if (!state.dryRun && meta.reclaimed === undefined)
          sql.exec(
            `INSERT OR REPLACE INTO condemned VALUES (?, ?, ?, ?, 1)`,
            digest,
            object.etag,
            meta.key ?? null,
            Number(meta.size ?? 0),
          );
        return;
      }
      if (!descriptor) return; // not a descriptor: npm run verify reports it; never touched here
      if (isMarked) {
        if (meta.gc === "condemned" && !state.dryRun) await this.revive(bucket, object, descriptor);
        return;
      }
      if (object.uploaded.getTime() >= cutoff) return;
      if (state.dryRun) {
        this.record("blob", digest, descriptor.size);
        state.removed.blobs++;
        state.bytesReclaimed += descriptor.size;
        return;
      }
      let etag = object.etag;
      if (meta.gc !== "condemned") {
        // R2's etag is the MD5 of the body: the mark goes into the body too (with its time,
        // so no two condemnations share an etag), or a revival, which writes the plain
        // descriptor back, could not be told from it by the tombstone's condition.
        const since = String(Date.now());
        const written = await bucket.put(object.key, JSON.stringify({ ...plain(descriptor), condemned: since }), {
          httpMetadata: { contentType: "application/json" },
          customMetadata: { ...descriptorMetadata(descriptor), gc: "condemned", since },
          onlyIf: { etagMatches: object.etag },
        });
        if (!written) return; // changed meanwhile: not this run's to condemn
        etag = written.etag;
      }
      sql.exec(
        `INSERT OR REPLACE INTO condemned VALUES (?, ?, ?, ?, 0)`,
        digest,
        etag,
        descriptor.key,
        descriptor.size,
      );
    });
    state.phaseDone += listing.objects.length;
    if (!listing.truncated) return this.next(state);
    state.cursor = listing.cursor;
  }

  private async revive(bucket: R2Bucket, object: R2Object, descriptor: BlobDescriptor): Promise<void> {
    await bucket.put(object.key, JSON.stringify(plain(descriptor)), {
      httpMetadata: { contentType: "application/json" },
      customMetadata: descriptorMetadata(descriptor),
      onlyIf: { etagMatches: object.etag },
    });
  }

  /** Lists every link again, after the last condemnation: a blob linked now is spared. */
  private async confirm(state: RunState, storage: Storage): Promise<void> {
    if (!state.cursor && this.count(`SELECT COUNT(*) AS n FROM condemned WHERE tombstone = 0`) === 0) {
      return this.next(state);
    }
    const sql = this.ctx.storage.sql;
    for (let page = 0; page < STEP.listPages; page++) {
      const listing = await storage.bucket.list({
        prefix: "repositories/",
        limit: state.batch ?? 1000,
        ...(state.cursor ? { cursor: state.cursor } : {}),
      });
      for (const object of listing.objects) {
        const parts = splitRepositoryKey(object.key);
        if (!parts) continue;
        const [first = "", second = "", third = ""] = parts.rest;
        const digest =
          parts.family === "_layers"
            ? digestText(first, second)
            : parts.family === "_manifests" && first === "revisions"
              ? digestText(second, third)
              : null;
        if (digest) sql.exec(`DELETE FROM condemned WHERE digest = ? AND tombstone = 0`, digest);
      }
      state.phaseDone += listing.objects.length;
      if (!listing.truncated) return this.next(state);
      state.cursor = listing.cursor;
    }
  }

  /** Tombstones each still-condemned descriptor (if unchanged), then deletes its KV copy, bytes and record. */
  private async reclaim(state: RunState, storage: Storage): Promise<void> {
    const sql = this.ctx.storage.sql;
    const rows = sql
      .exec<{ digest: string; etag: string; key: string | null; size: number; tombstone: number }>(
        `SELECT digest, etag, key, size, tombstone FROM condemned ORDER BY digest LIMIT ?`,
        this.batch(state, STEP.reclaim),
      )
      .toArray();
    if (rows.length === 0) return this.next(state);
    const { bucket, kv } = storage;
    await inParallel(rows, async (row) => {
      const digest = parseDigest(row.digest);
      const recordKey = Paths.blobDescriptor(digest);
      const meta = { key: row.key ?? "", size: String(row.size), gc: "tombstone" };
      let etag = row.etag;
      if (!row.tombstone) {
        // Exactly one of this and a writer's revival (BlobStore.ensureLive) wins.
        const tombstone = await bucket.put(recordKey, JSON.stringify({ digest: row.digest, tombstone: true }), {
          httpMetadata: { contentType: "application/json" },
          customMetadata: meta,
          onlyIf: { etagMatches: row.etag },
        });
        if (tombstone) etag = tombstone.etag;
        else {
          // Revived or replaced; or this step's earlier attempt wrote the tombstone.
          const head = await bucket.head(recordKey);
          const ours =
            head?.customMetadata?.gc === "tombstone" &&
            head.customMetadata.reclaimed === undefined &&
            head.customMetadata.key === meta.key;
          if (!head || !ours) {
            sql.exec(`DELETE FROM condemned WHERE digest = ?`, row.digest);
            return;
          }
          etag = head.etag;
        }
      }
      await kv.delete(Paths.kvBlob(digest));
      if (row.key) await bucket.delete(row.key);
      // The tombstone stays, marked reclaimed (R2 has no conditional delete: deleting it
      // could delete a descriptor a writer published over it meanwhile). A publish of the
      // digest replaces it; later runs skip it.
      const reclaimed = await bucket.put(
        recordKey,
        JSON.stringify({ digest: row.digest, tombstone: true, reclaimed: true }),
        {
          httpMetadata: { contentType: "application/json" },
          customMetadata: { ...meta, reclaimed: "1" },
          onlyIf: { etagMatches: etag },
        },
      );
      if (reclaimed) {
        state.removed.blobs++;
        state.bytesReclaimed += row.size;
        this.record("blob", row.digest, row.size);
      }
      sql.exec(`DELETE FROM condemned WHERE digest = ?`, row.digest);
    });
    state.phaseDone += rows.length;
  }

  /** Deletes `data/` objects no descriptor names, older than the upload TTL (an upload's, never published). */
  private async orphans(state: RunState, storage: Storage): Promise<void> {
    const listing = await storage.bucket.list({
      prefix: "data/",
      limit: this.batch(state, STEP.orphanPage),
      ...(state.cursor ? { cursor: state.cursor } : {}),
    });
    // The upload TTL and an hour: a session's retried commit may publish its object until then.
    const oldest = Date.now() - readConfig(this.env).uploadTtlSeconds * 1000 - ORPHAN_MARGIN_MS;
    const orphans: string[] = [];
    for (const object of listing.objects) {
      state.scanned.dataObjects++;
      if (object.uploaded.getTime() >= oldest) continue;
      if (this.count(`SELECT COUNT(*) AS n FROM named WHERE key = ?`, object.key) > 0) continue;
      // Withdrawn by the integrity check's repair and kept for inspection: never swept.
      if (await storage.bucket.head(Paths.quarantine(object.key))) continue;
      orphans.push(object.key);
      this.record("orphan", object.key, object.size);
      state.removed.orphans++;
      state.bytesReclaimed += object.size;
    }
    if (!state.dryRun && orphans.length > 0) await storage.bucket.delete(orphans);
    state.phaseDone += listing.objects.length;
    if (!listing.truncated) return this.next(state);
    state.cursor = listing.cursor;
  }
}

/** The GC_GRACE_SECONDS setting (default one day). */
export function gcGraceSeconds(env: Env): number {
  return settingsOf(env).gc.graceSeconds;
}

/** The one collector of this registry. */
export function collectorOf(env: Env): DurableObjectStub<GarbageCollector> {
  return env.GC.get(env.GC.idFromName("registry"));
}

interface References {
  mediaType: string;
  subject: string | null;
  children: string[];
  blobs: string[];
}

/**
 * What a stored manifest references; null when its bytes are gone or unreadable. Reads
 * only (a dry run writes nothing): the link's KV copy when it carries the bytes, else R2.
 */
async function readReferences(env: Env, repo: string, digest: Digest): Promise<References | null> {
  const storage = storageOf(env);
  const repository = repositoryParts(env, repo);
  const copy = linkCopyOf(
    await storage.kv.get(Paths.kvManifestRevision(repo, digest), "json").catch(() => null),
    digest,
  );
  let mediaType = copy?.link.mediaType;
  let bytes: Uint8Array | null = copy?.content ? decodeContent(copy.content) : null;
  if (bytes && (await digestOf(bytes, digest.algorithm)).value !== digest.value) bytes = null;
  if (!bytes) {
    const link = await repository.revisions.readLink(digest);
    const descriptor = link ? await repository.blobs.stat(digest, { strong: true }) : null;
    if (!link || !descriptor) return null;
    mediaType = link.mediaType;
    bytes = await repository.blobs.readBytes(descriptor);
  }
  if (!bytes || (await digestOf(bytes, digest.algorithm)).value !== digest.value) return null;
  try {
    const manifest = parseManifest(bytes, mediaType ?? "");
    return {
      mediaType: manifest.mediaType,
      subject: manifest.subject?.digest.value ?? null,
      children: manifest.manifests.map((child) => child.digest.value),
      blobs: manifest.blobs.filter((blob) => !blob.urls || blob.urls.length === 0).map((blob) => blob.digest.value),
    };
  } catch {
    return null;
  }
}

/** Writes back a revision link (and its referrer record) the prune removed. */
async function restoreManifest(env: Env, repo: string, digest: Digest, mediaType: string): Promise<void> {
  const repository = repositoryParts(env, repo);
  const descriptor = await repository.blobs.stat(digest, { strong: true });
  const bytes = descriptor ? await repository.blobs.readBytes(descriptor) : null;
  if (!descriptor || !bytes) return;
  try {
    const manifest = parseManifest(bytes, mediaType);
    if (manifest.subject) {
      await repository.referrers.add(
        manifest.subject.digest,
        digest,
        Referrers.describe(manifest, digest, bytes.byteLength),
      );
    }
  } catch {
    // Stored manifests parsed when pushed; one that no longer does is linked as it was.
  }
  await repository.revisions.link(digest, descriptor, mediaType ? { mediaType } : {}, bytes);
}

/** A `[repo, digest]` cursor; anything else (a cursor of an earlier version) starts over. */
function parseCursor(cursor: string | undefined): string[] {
  try {
    const value: unknown = cursor ? JSON.parse(cursor) : [];
    return Array.isArray(value) && value.every((part) => typeof part === "string") ? value : [];
  } catch {
    return [];
  }
}

/** Just the descriptor's fields (a condemned record's body has its mark too). */
function plain(descriptor: BlobDescriptor): BlobDescriptor {
  return { digest: descriptor.digest, size: descriptor.size, key: descriptor.key };
}

function digestText(algorithm: string, hex: string): string | null {
  try {
    return parseDigest(`${algorithm}:${hex}`).value;
  } catch {
    return null;
  }
}

async function* listAll(bucket: R2Bucket, prefix: string): AsyncGenerator<R2Object> {
  let cursor: string | undefined;
  for (;;) {
    const page = await bucket.list({ prefix, include: ["customMetadata"], ...(cursor ? { cursor } : {}) });
    yield* page.objects;
    if (!page.truncated) return;
    cursor = page.cursor;
  }
}

async function inParallel<T>(items: T[], work: (item: T) => Promise<void>): Promise<void> {
  for (let index = 0; index < items.length; index += IN_FLIGHT) {
    await Promise.all(items.slice(index, index + IN_FLIGHT).map(work));
  }
}
