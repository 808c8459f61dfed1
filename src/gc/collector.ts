import { DurableObject } from "cloudflare:workers";
import { collectorContext, collectorSeam, CollectorStore } from "../registry/collection";
import { Inventory } from "../registry/inventory";
import { Meter, runMetered } from "../registry/meter";
import { storageOf } from "../registry/storage";
import { decide } from "./decide";
import { settingsOf } from "../settings/settings";
import {
  emptyCounts,
  emptyRefused,
  markRun,
  next,
  PHASES,
  type GcItem,
  type GcOptions,
  type GcRun,
  type RunState,
  type Step,
} from "./run";
import { RunTables } from "./run-tables";
import { readManifests, readPulls, readTags, scan } from "./scan";
import { check, condemn, confirm, orphans, prune, reclaim } from "./sweep";

export type { GcCounts, GcItem, GcOptions, GcRefused, GcRemoved, GcRun, Phase } from "./run";

/**
 * Online garbage collection (docs/architecture.md, "Garbage collection"): one Durable
 * Object (a single instance, so one run at a time) drives a run through its phases in
 * bounded steps, one per alarm, keeping its cursor and its marks in its SQLite storage
 * (run-tables.ts). A step makes at most a few hundred storage calls (run.ts STEP budgets),
 * far under the per-invocation subrequest limit (1 000 on Free, 10 000 on Paid), and a
 * restart or a failed step resumes from the last saved cursor.
 *
 * Phases, in order:
 * - scan: list every key under `repositories/` (tags, revisions, layer links);
 * - tags, manifests: read what a listing does not say (the target of tags written before
 *   tags carried it in metadata; each manifest's references, read once per digest ever);
 * - pulls: when each manifest was last pulled (the pull records, in D1), for repositories
 *   whose retention rule has `pulledWithin`;
 * - decide: per repository, the mark (mark.ts, a pure function of what was listed):
 *   retention, what is kept (tagged manifests, what kept indexes list, referrers of kept
 *   subjects, untagged ones no rule removes) and which layer links no kept manifest uses;
 * - prune: remove those tags, revisions and links, each re-checked just before;
 * - check: per pruned repository, put back what a manifest pushed meanwhile needs;
 * - condemn: every blob descriptor no kept link names, older than the grace period, is
 *   condemned (a conditional rewrite: any writer linking it afterwards revives it);
 * - confirm: list every link again (after all condemnations): a linked blob is spared;
 * - reclaim: tombstone each still-condemned descriptor (conditionally on it being
 *   unchanged), delete its KV copy, its bytes, then mark the tombstone reclaimed;
 * - orphans: delete `data/` objects nothing names, older than the upload TTL.
 *
 * The phases read through the registry layer's Inventory and write through its
 * CollectorStore, where every removal is a `collect` change through the change seam.
 */

/** Items kept for the report. */
const ITEMS_MAX = 10_000;
/** Consecutive failed steps after which a run gives up (it can be started again). */
const MAX_FAILURES = 20;
const RETRY_DELAY_MS = 5_000;
const MAX_RETRY_DELAY_MS = 5 * 60_000;
/** Between two steps. */
const STEP_GAP_MS = 5;

const PHASE_STEPS: Record<RunState["phase"], (step: Step) => Promise<void>> = {
  scan,
  tags: readTags,
  manifests: readManifests,
  pulls: readPulls,
  decide,
  prune: (step) => (step.state.dryRun ? skip(step) : prune(step)),
  check: (step) => (step.state.dryRun ? skip(step) : check(step)),
  condemn,
  confirm: (step) => (step.state.dryRun ? skip(step) : confirm(step)),
  reclaim: (step) => (step.state.dryRun ? skip(step) : reclaim(step)),
  orphans,
  done: finish,
};

export class GarbageCollector extends DurableObject<Env> {
  private stepping = false;
  private readonly tables: RunTables;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.tables = new RunTables(ctx.storage.sql);
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
      refused: emptyRefused(),
      bytesReclaimed: 0,
      operations: { r2: 0, r2ClassA: 0, kv: 0, kvWrites: 0 },
      maxStepOperations: 0,
      maxStepMs: 0,
      maxStepComputeMs: 0,
      drive: options.drive ?? true,
      ...(options.batch ? { batch: options.batch } : {}),
    };
    this.tables.clear();
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
    const storage = storageOf(this.env);
    const step: Step = {
      state,
      tables: this.tables,
      inventory: new Inventory(storage),
      store: new CollectorStore(storage, collectorSeam(this.env), collectorContext(state.id)),
      env: this.env,
    };
    try {
      await runMetered(meter, () => PHASE_STEPS[state.phase](step));
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
        await markRun(step, "idle").catch(() => undefined);
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
    const text = this.tables.loadState();
    if (text === null) return null;
    const state = JSON.parse(text) as RunState;
    // A run an earlier version started, resumed by this one, has no refusals yet.
    state.refused ??= emptyRefused();
    return state;
  }

  private save(state: RunState): void {
    this.tables.saveState(JSON.stringify(state));
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
    const rows = this.tables.items(ITEMS_MAX);
    return {
      ...run,
      items: rows.map((row): GcItem => ({
        kind: row.kind,
        name: row.name,
        ...(row.size === null ? {} : { size: row.size }),
      })),
      itemsTruncated: rows.length >= ITEMS_MAX,
    };
  }
}

/** A phase a dry run passes over (it would write). */
async function skip(step: Step): Promise<void> {
  next(step.state);
}

async function finish(step: Step): Promise<void> {
  await markRun(step, "idle");
  step.state.status = "done";
  step.state.finishedAt = new Date().toISOString();
  step.state.scanned.repositories = step.tables.repositoryCount();
}

/** The GC_GRACE_SECONDS setting (default one day). */
export function gcGraceSeconds(env: Env): number {
  return settingsOf(env).gc.graceSeconds;
}

/** The one collector of this registry. */
export function collectorOf(env: Env): DurableObjectStub<GarbageCollector> {
  return env.GC.get(env.GC.idFromName("registry"));
}
