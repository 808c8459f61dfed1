import { RegistryError, unavailable as retryable } from "../oci/errors";
import { currentMeter } from "./meter";

/** The two stores the registry keeps its data in (see docs/architecture.md, "Where data lives"). */
export interface Storage {
  /** R2: blob bytes and every record; strongly consistent, the truth. */
  bucket: R2Bucket;
  /** KV: the edge cache of blob descriptors; eventually consistent, never the only record. */
  kv: KVNamespace;
}

/**
 * Test seam, unset in production: `npm test` wraps the raw bindings to inject KV
 * staleness and storage faults (test/unit/storage-faults.ts), and shortens the timeout.
 */
export const storageHooks: { wrap?: (storage: Storage) => Storage; timeoutMs?: number } = {};

/**
 * A storage call that has not settled after this long is given up with 503, so a client
 * never waits on a stuck request; its retry starts afresh. Streamed writes are exempt:
 * they take as long as their body does.
 */
const STORAGE_TIMEOUT_MS = 30_000;
/** KV is only a cache: waiting long for it would make a "best effort" read a stall. */
const KV_TIMEOUT_MS = 5_000;

function unavailable(operation: string, cause: unknown): RegistryError {
  return retryable("storage temporarily unavailable, retry", { operation, cause: String(cause) });
}

export function withTimeout<T>(promise: Promise<T>, operation: string, timeoutMs: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | null = null;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(unavailable(operation, `no answer in ${timeoutMs} ms`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => {
    if (timer !== null) clearTimeout(timer);
  });
}

function isStream(value: unknown): boolean {
  return value instanceof ReadableStream;
}

/** Objects a binding call returns that have storage calls of their own (multipart uploads). */
function hasStorageCalls(value: unknown): value is object {
  return typeof value === "object" && value !== null && "uploadPart" in value && "complete" in value;
}

/**
 * Wraps a binding so that every failure of a storage call surfaces as one typed,
 * retryable error (503 UNAVAILABLE with Retry-After) instead of an untyped exception
 * (which would be a 500), and so that no call can hang a request: the rule "a client
 * can retry every storage failure" lives here, not in every caller.
 */
function guarded<T extends object>(target: T, family: "r2" | "kv", timeoutMs: number): T {
  const handler: ProxyHandler<T> = {
    get(object, property) {
      const value: unknown = Reflect.get(object, property, object);
      if (typeof value !== "function") return value;
      const operation = `${family}.${String(property)}`;
      return (...args: unknown[]): unknown => {
        const started = performance.now();
        let result: unknown;
        try {
          result = Reflect.apply(value, object, args) as unknown;
        } catch (error) {
          throw error instanceof RegistryError ? error : unavailable(operation, error);
        }
        if (!(result instanceof Promise)) return hasStorageCalls(result) ? guarded(result, family, timeoutMs) : result;
        const settled = args.some(isStream) ? result : withTimeout(result, operation, timeoutMs);
        const record = () => currentMeter()?.record(family, String(property), performance.now() - started);
        return settled.then(
          (resolved: unknown) => {
            record();
            return hasStorageCalls(resolved) ? guarded(resolved, family, timeoutMs) : resolved;
          },
          (error: unknown) => {
            record();
            throw error instanceof RegistryError ? error : unavailable(operation, error);
          },
        );
      };
    },
  };
  return new Proxy(target, handler);
}

/** The registry's storage over the Worker's bindings. */
export function storageOf(env: Env): Storage {
  const raw: Storage = { bucket: env.BLOBS, kv: env.META };
  const storage = storageHooks.wrap ? storageHooks.wrap(raw) : raw;
  return {
    bucket: guarded(storage.bucket, "r2", storageHooks.timeoutMs ?? STORAGE_TIMEOUT_MS),
    kv: guarded(storage.kv, "kv", storageHooks.timeoutMs ?? KV_TIMEOUT_MS),
  };
}
