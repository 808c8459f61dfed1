import { AsyncLocalStorage } from "node:async_hooks";
import { requestEnv } from "../settings/request-env";

/**
 * What a request cost: every call it made to R2, KV, the Cache API and Durable Objects,
 * counted and timed, and sent back as a `Server-Timing` header (app.ts):
 *
 *   Server-Timing: r2;dur=12.4;desc="2", kv;dur=0.9;desc="1", cache;dur=0.3;desc="hit", do;dur=0;desc="0"
 *
 * `desc` is the number of calls (for `cache`: `hit`, `miss` or `bypass`), `dur` their
 * summed milliseconds (calls in parallel add up). More metrics appear when not zero:
 * `r2-class-a` (R2 operations billed as class A: writes, lists, multipart steps; the rest
 * of `r2` are class B reads and free deletes) and `kv-write` (KV puts and deletes),
 * `upstream`: requests a mirrored name made to its upstream registry (src/mirror), `d1`:
 * queries to D1 (the audit log, src/audit) the request waited for (the audit log's writes
 * run after the answer, waitUntil, and are not in it), and `queue`: messages sent to a
 * Queue (events: at most one per change, src/events).
 * Storage calls a response body makes after the headers went out (the slices of a large
 * blob read from R2) are counted when the body is set up, as they will be made.
 *
 * The meter of the request being served is found on the env the request's code is given
 * (`withMeter` below), so the storage seam (storage.ts), the edge cache and the Durable
 * Object calls record into it without every function passing it along.
 */
export type Store = "r2" | "kv" | "cache" | "do" | "upstream" | "d1" | "queue";
export type CacheOutcome = "hit" | "miss" | "bypass";

/** R2 operations billed as class A (docs: R2 pricing); get and head are class B, delete and abort are free. */
const R2_CLASS_A = new Set(["put", "list", "createMultipartUpload", "uploadPart", "complete"]);
const KV_WRITES = new Set(["put", "delete"]);

const STORES: readonly Store[] = ["r2", "kv", "cache", "do", "upstream", "d1", "queue"];
/** A store's metric when the request made no call to it. */
const UNUSED = Object.fromEntries(STORES.map((store) => [store, `${store};dur=0.0;desc="0"`])) as Record<Store, string>;
const UNUSED_CACHE = `cache;dur=0.0;desc="bypass"`;

interface Watch {
  deadline: number;
  expire: () => void;
}

export class Meter {
  private readonly calls: Record<Store, number> = { r2: 0, kv: 0, cache: 0, do: 0, upstream: 0, d1: 0, queue: 0 };
  private readonly milliseconds: Record<Store, number> = {
    r2: 0,
    kv: 0,
    cache: 0,
    do: 0,
    upstream: 0,
    d1: 0,
    queue: 0,
  };
  private r2ClassA = 0;
  private kvWrites = 0;
  private cacheOutcome: CacheOutcome | undefined;

  /** One call to `store` (`operation`: the binding's method name), taking `ms`. */
  record(store: Store, operation: string, ms: number, count = 1): void {
    this.calls[store] += count;
    this.milliseconds[store] += ms;
    if (store === "r2" && R2_CLASS_A.has(operation)) this.r2ClassA += count;
    if (store === "kv" && KV_WRITES.has(operation)) this.kvWrites += count;
  }

  /** The storage calls waiting for an answer, each with its deadline (`watch`). */
  private watches: Set<Watch> | undefined;
  /** The earliest deadline a timer is set for (Infinity: none). */
  private armedFor = Number.POSITIVE_INFINITY;
  /** The timer set for `armedFor`. */
  private timer: ReturnType<typeof setTimeout> | undefined;

  /**
   * Calls `expire` if the returned function has not been called within `timeoutMs`: the
   * storage seam's deadline for one call (storage.ts). All of a request's calls share one
   * timer, set for the earliest deadline, and cleared once no call waits: a pull's one call
   * leaves no timer pending past its request (whole requests measured 2–3 % less workerd
   * CPU than with the timer left to expire; docs/performance.md, "Fifth pass"). The meter is
   * where this lives because it is the one object per request that every storage call
   * already reaches.
   */
  watch(timeoutMs: number, expire: () => void): () => void {
    const watch: Watch = { deadline: Date.now() + timeoutMs, expire };
    const watches = (this.watches ??= new Set());
    watches.add(watch);
    if (watch.deadline < this.armedFor) this.arm(watch.deadline);
    return () => {
      watches.delete(watch);
      if (watches.size === 0 && this.timer !== undefined) {
        clearTimeout(this.timer);
        this.timer = undefined;
        this.armedFor = Number.POSITIVE_INFINITY;
      }
    };
  }

  private arm(deadline: number): void {
    this.armedFor = deadline;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.expireDue(), Math.max(0, deadline - Date.now()));
  }

  private expireDue(): void {
    this.timer = undefined;
    const now = Date.now();
    this.armedFor = Number.POSITIVE_INFINITY;
    let next = Number.POSITIVE_INFINITY;
    for (const watch of this.watches ?? []) {
      if (watch.deadline <= now) {
        this.watches?.delete(watch);
        watch.expire();
      } else next = Math.min(next, watch.deadline);
    }
    if (next < this.armedFor) this.arm(next);
  }

  /** What the edge cache did for this request; a hit anywhere wins over a miss. */
  cache(outcome: CacheOutcome): void {
    if (this.cacheOutcome === "hit") return;
    this.cacheOutcome = outcome;
  }

  /** The counts so far (the collector's report: src/gc). */
  totals(): { r2: number; r2ClassA: number; kv: number; kvWrites: number; storageMs: number } {
    const storageMs = this.milliseconds.r2 + this.milliseconds.kv + this.milliseconds.cache + this.milliseconds.do;
    return { r2: this.calls.r2, r2ClassA: this.r2ClassA, kv: this.calls.kv, kvWrites: this.kvWrites, storageMs };
  }

  header(): string {
    // Most requests use one store or none: the others' metrics are the same text every time.
    const metric = (store: Store) =>
      this.calls[store] === 0 && this.milliseconds[store] === 0
        ? UNUSED[store]
        : `${store};dur=${this.milliseconds[store].toFixed(1)};desc="${this.calls[store]}"`;
    const parts = [metric("r2"), metric("kv")];
    parts.push(
      this.cacheOutcome === undefined && this.milliseconds.cache === 0
        ? UNUSED_CACHE
        : `cache;dur=${this.milliseconds.cache.toFixed(1)};desc="${this.cacheOutcome ?? "bypass"}"`,
    );
    parts.push(metric("do"));
    // Requests to an upstream registry (mirrored names): only when there were any.
    if (this.calls.upstream > 0) parts.push(metric("upstream"));
    // D1 queries (the audit log's reads): only when there were any.
    if (this.calls.d1 > 0) parts.push(metric("d1"));
    // Queue sends (events): only when there were any.
    if (this.calls.queue > 0) parts.push(metric("queue"));
    if (this.r2ClassA > 0) parts.push(`r2-class-a;desc="${this.r2ClassA}"`);
    if (this.kvWrites > 0) parts.push(`kv-write;desc="${this.kvWrites}"`);
    return parts.join(", ");
  }
}

/**
 * Where a request's code finds its meter: on the env it was given. app.ts gives each
 * request an env of its own (`withMeter`: the Worker's env as its prototype, with the
 * meter kept beside it), and the storage seam (storage.ts), the edge cache, the mirror and
 * the other callers of `metered` read it from there. This costs a request one small object;
 * an A/B build without the AsyncLocalStorage run (and without the meter's records and
 * timer) spent 5–7 % less workerd CPU on a HEAD (docs/performance.md, "Request CPU against
 * serverless-registry").
 *
 * Work that has no such env (the collector's steps, the policies and listeners the
 * change seam keeps per isolate) finds the meter of the request or step it runs in
 * through AsyncLocalStorage (`runMetered`, `currentMeter`), as before: app.ts enters it
 * only for requests that may change something (not GET or HEAD), and a repository around a
 * change made during a GET (repository.ts `metering`).
 *
 * Each request's env and its meter are kept by the object, so no copy of one has it.
 */
const meters = new WeakMap<object, Meter>();

/** The env a request's code is given (settings/request-env.ts), carrying the request's `meter`. */
export function withMeter<E extends object>(env: E, meter: Meter): E {
  const scoped = requestEnv(env);
  meters.set(scoped, meter);
  return scoped;
}

/** The meter a request's env carries (`withMeter`), if it is one. */
export function meterOnEnv(env: object): Meter | undefined {
  return meters.get(env);
}

const current = new AsyncLocalStorage<Meter>();

/**
 * The meter of the request being served, if any (background work has none): the one on
 * `env` when given a request's, else the one of the request or collector step this runs in.
 */
export function currentMeter(env?: object): Meter | undefined {
  return (env && meters.get(env)) ?? current.getStore();
}

export function runMetered<T>(meter: Meter, run: () => T): T {
  return current.run(meter, run);
}

/**
 * Runs one call to `store` and records it into the request's meter: `meter` when the caller
 * has it (`meterOnEnv` of a request's env), else the one of the request or step it runs in.
 */
export async function metered<T>(
  store: Store,
  operation: string,
  call: () => Promise<T>,
  requestMeter?: Meter,
): Promise<T> {
  const meter = requestMeter ?? current.getStore();
  if (!meter) return call();
  const started = performance.now();
  try {
    return await call();
  } finally {
    meter.record(store, operation, performance.now() - started);
  }
}
