import type { ByteRange } from "./blob-store";
import { currentMeter } from "./meter";
import { Paths } from "./paths";

/**
 * The location's own cache (the Cache API), for what never changes under its name:
 * blob and manifest bytes by digest, shared by every repository that links them (the
 * link is checked before the cache is asked), and, when EDGE_TAG_TTL_SECONDS is set, the
 * digest a tag pointed at, for that long.
 *
 * The cache is per location and not replicated; a miss costs one R2 read, after which
 * the location serves the bytes itself. It only works on a custom domain: on
 * `*.workers.dev` hosts every call would be a silent no-op, so the cache is bypassed
 * there (and with EDGE_CACHE=off). A failing cache never fails a request: a failed match
 * is a miss, a failed put is dropped.
 */
export interface EdgeCacheOptions {
  /** The registry's own origin (cache keys are URLs on the Worker's host), or null to bypass. */
  origin: string | null;
  /** Largest blob kept (the Cache API's per-object limit on the plan). */
  maxBytes: number;
  /** How long a tag's digest is kept; 0: tags are never cached. */
  tagTtlSeconds: number;
  /** Keeps a cache write going after the answer is sent. */
  waitUntil: (work: Promise<unknown>) => void;
}

const IMMUTABLE = "public, max-age=31536000, immutable";
const CACHE_NAME = "edge-registry";

async function timed<T>(operation: string, call: () => Promise<T>): Promise<T> {
  const started = performance.now();
  try {
    return await call();
  } finally {
    currentMeter()?.record("cache", operation, performance.now() - started);
  }
}

export class EdgeCache {
  constructor(private readonly options: EdgeCacheOptions) {}

  /** A cache that does nothing (background work, tests of other layers). */
  static bypass(): EdgeCache {
    return new EdgeCache({ origin: null, maxBytes: 0, tagTtlSeconds: 0, waitUntil: () => undefined });
  }

  get enabled(): boolean {
    return this.options.origin !== null;
  }

  /** Whether a blob of this size is kept here (and so worth filling on a miss). */
  holds(size: number): boolean {
    return this.enabled && size > 0 && size <= this.options.maxBytes;
  }

  private open(): Promise<Cache> {
    return caches.open(CACHE_NAME);
  }

  /**
   * The cached bytes of `digest` (or the `range` of them: the cache answers ranges itself,
   * 206), or null on a miss. A cached answer that does not fit the request (a 200 for a
   * range) is treated as a miss.
   */
  async matchBlob(digest: string, range?: ByteRange): Promise<Response | null> {
    const meter = currentMeter();
    if (!this.options.origin) {
      meter?.cache("bypass");
      return null;
    }
    const key = Paths.cacheBlob(this.options.origin, digest);
    const headers = range ? { Range: `bytes=${range.start}-${range.end}` } : undefined;
    const found = await timed("match", async () => (await this.open()).match(new Request(key, { headers }))).catch(
      () => undefined,
    );
    const fits = found && (range ? found.status === 206 : found.status === 200);
    if (!found || !fits) {
      await found?.body?.cancel();
      meter?.cache("miss");
      return null;
    }
    meter?.cache("hit");
    return found;
  }

  /** Keeps `body` (exactly `size` bytes of `digest`) here; in the background, never failing the caller. */
  putBlob(digest: string, size: number, body: ReadableStream<Uint8Array> | Uint8Array<ArrayBuffer>): Promise<void> {
    const origin = this.options.origin;
    if (!origin) return Promise.resolve();
    const response = new Response(body, {
      headers: {
        "Content-Length": String(size),
        "Content-Type": "application/octet-stream",
        "Cache-Control": IMMUTABLE,
      },
    });
    const work = timed("put", async () => (await this.open()).put(Paths.cacheBlob(origin, digest), response)).catch(
      () => undefined,
    );
    this.options.waitUntil(work);
    return work;
  }

  /** The digest `name:tag` pointed at when this location last read it, within the tag TTL; else null. */
  async matchTag(name: string, tag: string): Promise<string | null> {
    if (!this.options.origin || this.options.tagTtlSeconds === 0) return null;
    const key = Paths.cacheTag(this.options.origin, name, tag);
    const found = await timed("match", async () => (await this.open()).match(key)).catch(() => undefined);
    currentMeter()?.cache(found ? "hit" : "miss");
    return found ? (await found.text()).trim() : null;
  }

  putTag(name: string, tag: string, digest: string): Promise<void> {
    const origin = this.options.origin;
    if (!origin || this.options.tagTtlSeconds === 0) return Promise.resolve();
    const response = new Response(digest, {
      headers: { "Cache-Control": `public, max-age=${this.options.tagTtlSeconds}`, "Content-Type": "text/plain" },
    });
    const work = timed("put", async () => (await this.open()).put(Paths.cacheTag(origin, name, tag), response)).catch(
      () => undefined,
    );
    this.options.waitUntil(work);
    return work;
  }

  /** Forgets a tag here (it moved or was deleted at this location: seen at once here). */
  async forgetTag(name: string, tag: string): Promise<void> {
    const origin = this.options.origin;
    if (!origin || this.options.tagTtlSeconds === 0) return;
    await timed("delete", async () => (await this.open()).delete(Paths.cacheTag(origin, name, tag))).catch(
      () => undefined,
    );
  }
}
