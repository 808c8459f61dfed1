import { env } from "cloudflare:test";
import { afterEach, expect } from "vitest";
import { verifyStorage, type VerifyReport } from "../../src/registry/integrity";
import { storageHooks, type Storage } from "../../src/registry/storage";

/**
 * Storage as production can behave and miniflare never does: a KV that lags (a write
 * not yet seen at this location, an old value still served), and R2 or KV calls that
 * fail or never answer part-way through a request. Installed through the storage seam
 * (`storageHooks`), so the Worker and the upload objects (same isolate under the test
 * pool) both run on it.
 */

/** One storage call as the fault plan sees it. */
export interface StorageCall {
  store: "r2" | "kv";
  /** `get`, `put`, `head`, `list`, `delete`, `createMultipartUpload`, `multipart.uploadPart`, … */
  method: string;
  key: string;
  /** 1-based count of storage calls since the plan was installed. */
  index: number;
}

/** What to do to a call: fail before it runs, run it and then fail (the answer lost), or never answer. */
export type Fault = "throw" | "throw-after" | "hang" | undefined;

export interface FaultPlan {
  decide(call: StorageCall): Fault;
}

export interface KvStaleness {
  /** Every get is a miss, as at a location the writes have not reached yet. */
  misses?: boolean;
  /** Values served instead of the current ones (an old value still cached here). */
  oldValues?: Map<string, string>;
  /** `list` leaves out keys written since the plan was installed. */
  laggingList?: boolean;
}

const NEVER = new Promise<never>(() => undefined);

function keyOf(args: unknown[]): string {
  const first = args[0];
  if (typeof first === "string") return first;
  if (typeof first === "object" && first !== null && "prefix" in first) return `list:${String(first.prefix)}`;
  return "";
}

class FaultyStorage {
  private calls = 0;
  readonly log: StorageCall[] = [];
  readonly fired: StorageCall[] = [];
  private readonly written = new Set<string>();

  constructor(
    private readonly plan: FaultPlan,
    private readonly kvStaleness: KvStaleness,
  ) {}

  wrap(storage: Storage): Storage {
    return { bucket: this.proxy(storage.bucket, "r2", ""), kv: this.staleKv(this.proxy(storage.kv, "kv", "")) };
  }

  private proxy<T extends object>(target: T, store: "r2" | "kv", prefix: string): T {
    const handler: ProxyHandler<T> = {
      get: (object, property) => {
        const value: unknown = Reflect.get(object, property, object);
        if (typeof value !== "function") return value;
        const method = `${prefix}${String(property)}`;
        return (...args: unknown[]): unknown => {
          const call: StorageCall = { store, method, key: keyOf(args), index: ++this.calls };
          this.log.push(call);
          const fault = this.plan.decide(call);
          if (fault) this.fired.push(call);
          if (fault === "throw") return Promise.reject(new Error(`injected fault: ${store}.${method}`));
          if (fault === "hang") return NEVER;
          if (store === "kv" && method === "put") this.written.add(call.key);
          const result = Reflect.apply(value, object, args) as unknown;
          const wrapResult = (resolved: unknown): unknown =>
            typeof resolved === "object" && resolved !== null && "uploadPart" in resolved
              ? this.proxy(resolved, store, "multipart.")
              : resolved;
          if (!(result instanceof Promise)) return wrapResult(result);
          return result.then((resolved: unknown) => {
            if (fault === "throw-after") throw new Error(`injected fault after ${store}.${method} ran`);
            return wrapResult(resolved);
          });
        };
      },
    };
    return new Proxy(target, handler);
  }

  private staleKv(kv: KVNamespace): KVNamespace {
    const staleness = this.kvStaleness;
    if (!staleness.misses && !staleness.oldValues && !staleness.laggingList) return kv;
    const written = this.written;
    const handler: ProxyHandler<KVNamespace> = {
      get(object, property) {
        const value: unknown = Reflect.get(object, property, object);
        if (typeof value !== "function") return value;
        if (property === "get") {
          return async (key: string, type?: unknown): Promise<unknown> => {
            const old = staleness.oldValues?.get(key);
            if (old !== undefined)
              return type === "json" || (typeof type === "object" && type !== null) ? JSON.parse(old) : old;
            if (staleness.misses) return null;
            return Reflect.apply(value, object, [key, type]) as unknown;
          };
        }
        if (property === "list" && staleness.laggingList) {
          return async (options?: KVNamespaceListOptions): Promise<unknown> => {
            const page = (await Reflect.apply(value, object, [options])) as KVNamespaceListResult<unknown>;
            return { ...page, keys: page.keys.filter((entry) => !written.has(entry.name)) };
          };
        }
        return (...args: unknown[]): unknown => Reflect.apply(value, object, args) as unknown;
      },
    };
    return new Proxy(kv, handler);
  }
}

/**
 * Runs the registry on faulty / stale storage until the test ends (or `restore()`).
 * Returns the call log and the calls a fault was applied to.
 */
export function installStorage(plan: FaultPlan = { decide: () => undefined }, kv: KvStaleness = {}): FaultyStorage {
  const faulty = new FaultyStorage(plan, kv);
  storageHooks.wrap = (storage) => faulty.wrap(storage);
  return faulty;
}

export function restoreStorage(): void {
  delete storageHooks.wrap;
  delete storageHooks.timeoutMs;
}

afterEach(restoreStorage);

/** A plan that applies `fault` to the `n`-th storage call only. */
export function faultAt(n: number, fault: Fault = "throw"): FaultPlan {
  return { decide: (call) => (call.index === n ? fault : undefined) };
}

/** A plan that applies `fault` to every call matching `match`. */
export function faultWhere(match: (call: StorageCall) => boolean, fault: Fault = "throw"): FaultPlan {
  return { decide: (call) => (match(call) ? fault : undefined) };
}

/**
 * Empties R2 and KV (the test file's own storage): the fault loops start each step from
 * nothing, so the integrity check after it reads that step's records only, not every
 * earlier step's (which made each check slower than the last).
 */
export async function wipeStorage(): Promise<void> {
  for (let page = 0; page < 1000; page++) {
    const listing = await env.BLOBS.list({ limit: 1000 });
    if (listing.objects.length === 0) break;
    await env.BLOBS.delete(listing.objects.map((object) => object.key));
  }
  for (let page = 0; page < 1000; page++) {
    const listing = await env.META.list({ limit: 1000 });
    if (listing.keys.length === 0) break;
    await Promise.all(listing.keys.map((key) => env.META.delete(key.name)));
  }
}

/**
 * The integrity check over the real bindings (sizes checked; bytes re-hashed only with
 * `rehash`, since it reads every blob of the test file): nothing inconsistent. Findings of kind
 * `orphan-data` (objects of uploads in flight or that lost) are expected; an empty
 * catalog entry (a push that failed between listing the repository and linking) is
 * harmless.
 */
export async function expectConsistent(options: { rehash?: boolean } = {}): Promise<VerifyReport> {
  const report = await verifyStorage({ bucket: env.BLOBS, kv: env.META }, { rehash: options.rehash ?? false });
  const problems = report.findings.filter(
    (finding) => finding.kind !== "orphan-data" && finding.kind !== "catalog-entry-empty",
  );
  expect(problems).toEqual([]);
  return report;
}
