import type { CollectorStore } from "../registry/collection";
import type { Inventory } from "../registry/inventory";
import type { RunTables } from "./run-tables";

/** A collection run: its phases, its options, its report, and what one step works with. */

export type Phase =
  | "scan"
  | "tags"
  | "manifests"
  | "pulls"
  | "decide"
  | "prune"
  | "check"
  | "condemn"
  | "confirm"
  | "reclaim"
  | "orphans"
  | "done";

export const PHASES: Phase[] = [
  "scan",
  "tags",
  "manifests",
  "pulls",
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

/** Removals a change policy refused (registry/changes.ts): those items stay, with what they need. */
export interface GcRefused {
  tags: number;
  manifests: number;
  links: number;
  blobs: number;
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
  refused: GcRefused;
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
export interface RunState extends Omit<GcRun, "phaseNumber" | "phaseCount" | "blobsRemoved"> {
  startedMs: number;
  cursor?: string;
  batch?: number;
  drive: boolean;
}

/** What one step of a phase works with. */
export interface Step {
  state: RunState;
  tables: RunTables;
  /** Reads (listings, a tag's target, a manifest's references). */
  inventory: Inventory;
  /** Writes: every removal, each through the change seam. */
  store: CollectorStore;
  env: Env;
}

/** Per-step budgets (storage calls are at most a small multiple of these). */
export const STEP = {
  listPages: 3,
  tagReads: 100,
  manifestReads: 50,
  // Pull records read per D1 query, and queries per step (D1 Free: 50 queries an invocation).
  pullRows: 5000,
  pullPages: 4,
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

export function emptyCounts(): GcCounts {
  return { repositories: 0, tags: 0, manifests: 0, links: 0, blobs: 0, dataObjects: 0 };
}

export function emptyRefused(): GcRefused {
  return { tags: 0, manifests: 0, links: 0, blobs: 0 };
}

/** On to the next phase, from its start. */
export function next(state: RunState): void {
  const index = PHASES.indexOf(state.phase);
  state.phase = PHASES[index + 1] ?? "done";
  state.phaseDone = 0;
  delete state.cursor;
}

export function batch(state: RunState, size: number): number {
  return state.batch ?? size;
}

/** Where the run's cutoff lies: blobs and links written after it are never removed. */
export function cutoff(state: RunState): number {
  return state.startedMs - state.graceSeconds * 1000;
}

const COUNTERS: Record<GcItem["kind"], keyof GcRemoved> = {
  tag: "tags",
  manifest: "manifests",
  link: "links",
  blob: "blobs",
  orphan: "orphans",
};

/** Counts and records (for the report) one item removed, or, in a dry run, one that would be. */
export function removed(step: Step, kind: GcItem["kind"], name: string, size?: number): void {
  step.state.removed[COUNTERS[kind]]++;
  if (size !== undefined) step.state.bytesReclaimed += size;
  step.tables.addItem(kind, name, size);
}

export async function inParallel<T>(items: T[], work: (item: T) => Promise<void>): Promise<void> {
  for (let index = 0; index < items.length; index += IN_FLIGHT) {
    await Promise.all(items.slice(index, index + IN_FLIGHT).map(work));
  }
}

/**
 * Writes the run marker (CollectorStore.markRun): `active` before the scan, `idle` at the
 * end. Not in a dry run, which removes nothing.
 */
export async function markRun(step: Step, phase: "active" | "idle"): Promise<void> {
  if (step.state.dryRun) return;
  await step.store.markRun(step.state.id, phase);
}
