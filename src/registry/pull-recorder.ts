import { isolateEnv } from "../settings/request-env";
import { waitUntil } from "cloudflare:workers";
import { settingsOf } from "../settings/settings";
import type { ChangeListener, PullListener, SeamExtension } from "./changes";
import { PullRecords, type PullCount } from "./pull-records";

/**
 * Records when each manifest was last pulled and how often (docs/architecture.md, "Pull
 * records"), as a pull listener and a change listener on the repository seam, without
 * slowing pulls: an isolate writes a manifest's record at most once per
 * PULL_RECORD_INTERVAL, after the answer (the request's waitUntil); the pulls in between
 * are counted in memory and added by the next write. Most pulls do no I/O at all: a map
 * lookup and an increment.
 *
 * Approximate by design: counts still in an isolate's memory are lost when it is evicted,
 * a recorded time can be up to one interval behind the last pull, and each isolate
 * writes once per interval (so a manifest pulled everywhere costs a write per isolate
 * and interval, not one in all). A deleted manifest's record is deleted.
 */

/** Manifests one isolate remembers; beyond, the longest unwritten are written out and forgotten. */
const SEEN_MAX = 5000;
/** Forgotten at once when the map is full (their pending counts written with the write that made room). */
const EVICT_BATCH = 250;
/** Due records wait this long to share a D1 call (an index pulled with its children, a burst of first pulls). */
const FLUSH_DELAY_MS = 10;
/** Most rows one D1 call writes (10 upserts of 25); more go in the next call. */
const FLUSH_ROWS = 250;

/** What an isolate knows of a manifest it saw pulled. */
interface Seen {
  /** When it last decided to write this record (ms). */
  writtenAt: number;
  /** The latest pull counted since (ms). */
  lastPull: number;
  /** Pulls counted since that write, added by the next. */
  pending: number;
}

interface ManifestKey {
  repository: string;
  digest: string;
}

/** Writes under way in this isolate, of every recorder (pullRecordsSettled waits for them). */
const inFlight = new Set<Promise<void>>();

/** Until the pull record writes this isolate has started are done (tests wait for them). */
export async function pullRecordsSettled(): Promise<void> {
  while (inFlight.size > 0) await Promise.all([...inFlight]);
}

export class PullRecorder {
  private readonly seen = new Map<string, Seen>();
  private due: PullCount[] = [];
  private forgotten: ManifestKey[] = [];
  private flushing: Promise<void> | null = null;

  constructor(
    private readonly records: PullRecords,
    private readonly intervalMs: number,
    private readonly clock: () => number = Date.now,
  ) {}

  /**
   * A pull of a manifest. Nothing to do (undefined) when this isolate wrote its record
   * within the interval: the pull is counted for the next write. Otherwise the record is
   * due, and the returned promise writes it (the caller keeps it going after the answer).
   */
  pulled(repository: string, digest: string): Promise<void> | undefined {
    const now = this.clock();
    const key = `${repository}@${digest}`;
    const seen = this.seen.get(key);
    if (seen && now - seen.writtenAt < this.intervalMs) {
      seen.pending++;
      seen.lastPull = Math.max(seen.lastPull, now);
      return undefined;
    }
    // Re-inserted: the map's order is the order of writes, oldest first (eviction's).
    this.seen.delete(key);
    this.seen.set(key, { writtenAt: now, lastPull: now, pending: 0 });
    this.due.push({ repository, digest, time: now, count: (seen?.pending ?? 0) + 1 });
    if (this.seen.size > SEEN_MAX) this.evict();
    return this.flush();
  }

  /** A manifest was deleted: its record goes, and whatever this isolate counted of it. */
  forget(repository: string, digest: string): Promise<void> {
    this.seen.delete(`${repository}@${digest}`);
    this.due = this.due.filter((row) => row.repository !== repository || row.digest !== digest);
    this.forgotten.push({ repository, digest });
    return this.flush();
  }

  /** Makes room: the manifests written longest ago are forgotten, their counted pulls written out. */
  private evict(): void {
    let evicted = 0;
    for (const [key, seen] of this.seen) {
      if (evicted++ >= EVICT_BATCH) break;
      this.seen.delete(key);
      if (seen.pending === 0) continue;
      const at = key.indexOf("@");
      this.due.push({
        repository: key.slice(0, at),
        digest: key.slice(at + 1),
        time: seen.lastPull,
        count: seen.pending,
      });
    }
  }

  /** The write of what is due, shared by everything that comes due within FLUSH_DELAY_MS. */
  private flush(): Promise<void> {
    if (this.flushing) return this.flushing;
    const flushing = new Promise((resolve) => setTimeout(resolve, FLUSH_DELAY_MS)).then(() => this.write());
    this.flushing = flushing;
    inFlight.add(flushing);
    void flushing.finally(() => inFlight.delete(flushing));
    return flushing;
  }

  /** One D1 call of at most FLUSH_ROWS rows; a failure is logged, and those counts are lost. */
  private async write(): Promise<void> {
    this.flushing = null;
    const forgotten = this.forgotten.splice(0, FLUSH_ROWS);
    const counts = this.due.splice(0, FLUSH_ROWS - forgotten.length);
    if (this.due.length > 0 || this.forgotten.length > 0) keepGoing(this.flush());
    try {
      await this.records.write(counts, forgotten);
    } catch (error) {
      console.error(
        `pulls: ${counts.length} records and ${forgotten.length} deletions lost (D1 failed)`,
        counts.map((row) => `${row.repository}@${row.digest} +${row.count}`).join("; "),
        String(error),
      );
    }
  }
}

/** Keeps `work` going after the answer; outside a request (an alarm's end), it runs on by itself. */
function keepGoing(work: Promise<void>): void {
  try {
    waitUntil(work);
  } catch {
    // No request to extend.
  }
}

/** One recorder per environment (the Worker's env is one object per isolate). */
const recorders = new WeakMap<object, PullRecorder>();

/** The environment's recorder; null when PULL_RECORD_INTERVAL is off or no AUDIT database is bound. */
export function pullRecorderOf(requestEnv: Env): PullRecorder | null {
  const env = isolateEnv(requestEnv);
  const interval = settingsOf(env).pullRecordIntervalSeconds;
  const db = env.AUDIT as D1Database | undefined;
  if (interval === null || !db) return null;
  let recorder = recorders.get(env);
  if (!recorder) {
    recorder = new PullRecorder(new PullRecords(db), interval * 1000);
    recorders.set(env, recorder);
  }
  return recorder;
}

/**
 * The seam's pull records (registered by app.ts): manifest pulls are counted, and a
 * manifest's deletion (by a client or the collector) deletes its record.
 */
export const pullRecordsExtension: SeamExtension = {
  name: "pull-records",
  pullListeners: (env): PullListener[] => {
    const recorder = pullRecorderOf(env);
    if (!recorder) return [];
    return [
      {
        name: "pull-records",
        // Blobs are not recorded: a blob pull then costs what it did.
        wantsPull: (action) => action === "manifest.pull",
        pulled: (pull) =>
          pull.action === "manifest.pull" ? recorder.pulled(pull.repository, pull.digest.value) : undefined,
      },
    ];
  },
  listeners: (env): ChangeListener[] => {
    const recorder = pullRecorderOf(env);
    if (!recorder) return [];
    return [
      {
        name: "pull-records",
        wants: (action) => action === "manifest.delete" || action === "collect",
        // Written after the answer: a DELETE waits for no D1 call.
        changed: (change) => {
          if (change.action === "manifest.delete") keepGoing(recorder.forget(change.repository, change.digest.value));
          else if (change.action === "collect" && change.kind === "manifest" && change.repository !== undefined)
            keepGoing(recorder.forget(change.repository, change.digest.value));
        },
      },
    ];
  },
};
