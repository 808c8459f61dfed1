import { RegistryError, unavailable as retryable } from "../oci/errors";
import { isolateEnv } from "../settings/request-env";
import { currentMeter, meterOnEnv, type Meter } from "./meter";

/** The two stores the registry keeps its data in (see docs/architecture.md, "Where data lives"). */
export interface Storage {
  /** R2: blob bytes and every record; strongly consistent, the truth. */
  bucket: R2Bucket;
  /** KV: the edge cache of blob descriptors; eventually consistent, never the only record. */
  kv: KVNamespace;
  /** The meter of the request these calls are made for (Server-Timing), when they are made for one. */
  meter?: Meter;
}

/** On a request's view of a guarded binding (`scoped`): the meter its calls record into. */
const CALL_METER = Symbol("storage call meter");
type Scoped = { [CALL_METER]?: Meter };

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
  // One promise and one timer per call (a race and a `finally` made three more promises).
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(unavailable(operation, `no answer in ${timeoutMs} ms`)), timeoutMs);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

function isStream(value: unknown): boolean {
  return value instanceof ReadableStream;
}

/** Objects a binding call returns that have storage calls of their own (multipart uploads). */
function hasStorageCalls(value: unknown): value is object {
  return typeof value === "object" && value !== null && "uploadPart" in value && "complete" in value;
}

/** The methods that return a multipart upload (guarded in turn), and those whose body may be a stream. */
const RETURNS_UPLOAD = new Set<PropertyKey>(["createMultipartUpload", "resumeMultipartUpload"]);
const TAKES_BODY = new Set<PropertyKey>(["put", "uploadPart"]);
/**
 * The storage calls the registry makes (R2 buckets, KV namespaces, multipart uploads):
 * their wrappers are made up front, as the guarded object's own properties.
 */
const STORAGE_METHODS = [
  "head",
  "get",
  "getWithMetadata",
  "list",
  "put",
  "delete",
  "createMultipartUpload",
  "resumeMultipartUpload",
  "uploadPart",
  "complete",
  "abort",
];

/**
 * Wraps a binding so that every failure of a storage call surfaces as one typed,
 * retryable error (503 UNAVAILABLE with Retry-After) instead of an untyped exception
 * (which would be a 500), and so that no call can hang a request: the rule "a client
 * can retry every storage failure" lives here, not in every caller. Each method's wrapper
 * is made once per wrapped object, and a call costs one promise (its deadline shares the
 * request's timer: Meter.watch).
 *
 * The known methods' wrappers are own properties of the returned object, in front of a
 * Proxy that wraps anything else: V8 caches no property lookup through a Proxy's trap, and
 * with real storage calls between requests the trap cost 4–5 % of a HEAD's workerd CPU
 * (docs/performance.md, "Sixth pass").
 */
function guarded<T extends object>(target: T, family: "r2" | "kv", timeoutMs: number): T {
  const wrappers = new Map<PropertyKey, unknown>();
  const wrap = (method: (...args: unknown[]) => unknown, property: PropertyKey) => {
    const operation = `${family}.${String(property)}`;
    const name = String(property);
    const returnsUpload = RETURNS_UPLOAD.has(property);
    const takesBody = TAKES_BODY.has(property);
    const failure = (error: unknown) => (error instanceof RegistryError ? error : unavailable(operation, error));
    const answer = (resolved: unknown) =>
      returnsUpload && hasStorageCalls(resolved) ? guarded(resolved, family, timeoutMs) : resolved;
    // A function, not an arrow: called on a request's view of the binding (`scoped`), `this`
    // holds the request's meter; on the binding itself, the step or request it runs in has it.
    return function (this: Scoped | undefined, ...args: unknown[]): unknown {
      const started = performance.now();
      let result: unknown;
      try {
        result = Reflect.apply(method, target, args) as unknown;
      } catch (error) {
        throw failure(error);
      }
      if (!(result instanceof Promise)) return answer(result);
      // Streamed writes take as long as their body does: no timeout.
      const timed = !(takesBody && args.some(isStream));
      const call = result;
      const meter = this?.[CALL_METER] ?? currentMeter();
      return new Promise((resolve, reject) => {
        let settled = false;
        const settle = () => {
          settled = true;
          meter?.record(family, name, performance.now() - started);
        };
        const expire = () => {
          if (settled) return;
          settle();
          reject(unavailable(operation, `no answer in ${timeoutMs} ms`));
        };
        // A request's calls share its meter's timer; background work (no meter) has its own.
        let timer: ReturnType<typeof setTimeout> | undefined;
        let answered: (() => void) | undefined;
        if (timed && meter) answered = meter.watch(timeoutMs, expire);
        else if (timed) timer = setTimeout(expire, timeoutMs);
        call.then(
          (resolved: unknown) => {
            answered?.();
            if (timer !== undefined) clearTimeout(timer);
            if (settled) return;
            settle();
            resolve(answer(resolved));
          },
          (error: unknown) => {
            answered?.();
            if (timer !== undefined) clearTimeout(timer);
            if (settled) return;
            settle();
            reject(failure(error));
          },
        );
      });
    };
  };
  const proxy = new Proxy(target, {
    get(object, property) {
      const value: unknown = Reflect.get(object, property, object);
      if (typeof value !== "function") return value;
      let wrapper = wrappers.get(property);
      if (wrapper === undefined) {
        wrapper = wrap(value as (...args: unknown[]) => unknown, property);
        wrappers.set(property, wrapper);
      }
      return wrapper;
    },
  });
  const front = Object.create(proxy) as T;
  for (const property of STORAGE_METHODS) {
    const method: unknown = Reflect.get(target, property, target);
    if (typeof method !== "function") continue;
    // Shadows the proxy: its trap never sees these names.
    Object.defineProperty(front, property, { value: wrap(method as (...args: unknown[]) => unknown, property) });
  }
  return front;
}

/** The guarded storage of each environment object, when no test hook is set (one per isolate). */
const guardedStorage = new WeakMap<object, Storage>();
/** Each request's view of it (`scoped`), made at its first use. */
const requestStorage = new WeakMap<object, Storage>();

function storageHooked(): boolean {
  return storageHooks.wrap !== undefined || storageHooks.timeoutMs !== undefined;
}

/** The guarded bindings of the Worker's env (per isolate; per call when a test hook is set). */
function guardedStorageOf(env: Env): Storage {
  const hooked = storageHooked();
  const known = hooked ? undefined : guardedStorage.get(env);
  if (known) return known;
  const raw: Storage = { bucket: env.BLOBS, kv: env.META };
  const storage = storageHooks.wrap ? storageHooks.wrap(raw) : raw;
  const made = {
    bucket: guarded(storage.bucket, "r2", storageHooks.timeoutMs ?? STORAGE_TIMEOUT_MS),
    kv: guarded(storage.kv, "kv", storageHooks.timeoutMs ?? KV_TIMEOUT_MS),
  };
  if (!hooked) guardedStorage.set(env, made);
  return made;
}

/** A request's view of a guarded binding: the same methods, recording into `meter`. */
function scoped<T extends object>(binding: T, meter: Meter): T {
  const view = Object.create(binding) as T & Scoped;
  view[CALL_METER] = meter;
  return view;
}

/**
 * The registry's storage over the Worker's bindings. Given a request's env (app.ts), the
 * request's view of them, whose calls its meter counts (two small objects per request;
 * the guarded bindings and their wrappers are made once per isolate).
 */
export function storageOf(env: Env): Storage {
  const base = guardedStorageOf(isolateEnv(env));
  const meter = meterOnEnv(env);
  if (!meter) return base;
  let view = storageHooked() ? undefined : requestStorage.get(env);
  if (!view) {
    view = { bucket: scoped(base.bucket, meter), kv: scoped(base.kv, meter), meter };
    requestStorage.set(env, view);
  }
  return view;
}
