import type { ByteRange } from "./blob-store";
import { currentMeter, type Meter } from "./meter";
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
  /** The meter of the request this cache serves (Server-Timing); else the one it runs in, if any. */
  meter?: Meter;
}

const IMMUTABLE = "public, max-age=31536000, immutable";

function blobHeaders(size: number): HeadersInit {
  return { "Content-Length": String(size), "Content-Type": "application/octet-stream", "Cache-Control": IMMUTABLE };
}
const CACHE_NAME = "edge-registry";

async function timed<T>(meter: Meter | undefined, operation: string, call: () => Promise<T>): Promise<T> {
  const started = performance.now();
  try {
    return await call();
  } finally {
    meter?.record("cache", operation, performance.now() - started);
  }
}

export class EdgeCache {
  constructor(private readonly options: EdgeCacheOptions) {}

  private get meter(): Meter | undefined {
    return this.options.meter ?? currentMeter();
  }

  /** A cache that does nothing (background work, tests of other layers); it holds no state, so one serves all. */
  static bypass(): EdgeCache {
    return BYPASS;
  }

  get enabled(): boolean {
    return this.options.origin !== null;
  }

  /** Whether tags' records are kept here (EDGE_TAG_TTL_SECONDS on a usable host). */
  get keepsTags(): boolean {
    return this.options.origin !== null && this.options.tagTtlSeconds > 0;
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
   * 206), or null on a miss. An entry that is not the whole blob (`size` bytes, by its
   * Content-Length, or the total of its Content-Range) is deleted and counts as a miss,
   * and so does a cached answer that does not fit the request (a 200 for a range).
   */
  async matchBlob(digest: string, size: number, range?: ByteRange): Promise<Response | null> {
    const meter = this.meter;
    if (!this.options.origin) {
      meter?.cache("bypass");
      return null;
    }
    const key = Paths.cacheBlob(this.options.origin, digest);
    const headers = range ? { Range: `bytes=${range.start}-${range.end}` } : undefined;
    const found = await timed(this.meter, "match", async () =>
      (await this.open()).match(new Request(key, { headers })),
    ).catch(() => undefined);
    const whole = range
      ? found?.status === 206 && found.headers.get("Content-Range")?.endsWith(`/${size}`) === true
      : found?.status === 200 && found.headers.get("Content-Length") === String(size);
    if (!found || !whole) {
      await found?.body?.cancel();
      if (found && (found.status === 200 || found.status === 206)) {
        // Not this blob's bytes whole: never serve it again.
        await timed(this.meter, "delete", async () => (await this.open()).delete(key)).catch(() => undefined);
      }
      meter?.cache("miss");
      return null;
    }
    meter?.cache("hit");
    return found;
  }

  /**
   * Keeps `body` (exactly `size` bytes of `digest`) here; in the background, never failing
   * the caller. The body goes to a key of its own first, and only once `verified`
   * (BlobStore.openTwice: every byte arrived and they hash to the digest) is that entry
   * copied to the digest's key and dropped. A fill cut short (the client went away, the
   * bytes did not match) so never lands where pulls look, even when the cache keeps what
   * it got of a failed put (Miniflare's does), nor does it overwrite a whole entry written
   * meanwhile by another fill. A cache that refuses the body gets it cancelled, so whoever
   * writes it is not held up.
   */
  putBlob(
    digest: string,
    size: number,
    body: ReadableStream<Uint8Array> | Uint8Array<ArrayBuffer>,
    verified: Promise<boolean> = Promise.resolve(true),
  ): Promise<void> {
    const origin = this.options.origin;
    if (!origin) {
      if (body instanceof ReadableStream) void body.cancel();
      return Promise.resolve();
    }
    const key = Paths.cacheBlob(origin, digest);
    const staging = Paths.cacheFill(origin, digest, crypto.randomUUID());
    const response = new Response(body, { headers: blobHeaders(size) });
    const work = (async () => {
      const cache = await this.open();
      const staged = await timed(this.meter, "put", () => cache.put(staging, response)).then(
        () => true,
        async () => {
          await response.body?.cancel().catch(() => undefined);
          return false;
        },
      );
      try {
        if (!staged || !(await verified.catch(() => false))) return;
        const whole = await timed(this.meter, "match", () => cache.match(staging));
        if (whole?.headers.get("Content-Length") !== String(size) || !whole.body) {
          await whole?.body?.cancel();
          return;
        }
        await timed(this.meter, "put", () => cache.put(key, new Response(whole.body, { headers: blobHeaders(size) })));
      } finally {
        await timed(this.meter, "delete", () => cache.delete(staging)).catch(() => undefined);
      }
    })().catch(() => undefined);
    this.options.waitUntil(work);
    return work;
  }

  /** The record of `name:tag` (tags.ts) when this location last read it, within the tag TTL; else null. */
  async matchTag(name: string, tag: string): Promise<string | null> {
    if (!this.options.origin || this.options.tagTtlSeconds === 0) return null;
    const key = Paths.cacheTag(this.options.origin, name, tag);
    const found = await timed(this.meter, "match", async () => (await this.open()).match(key)).catch(() => undefined);
    this.meter?.cache(found ? "hit" : "miss");
    return found ? (await found.text()).trim() : null;
  }

  putTag(name: string, tag: string, record: string): Promise<void> {
    const origin = this.options.origin;
    if (!origin || this.options.tagTtlSeconds === 0) return Promise.resolve();
    const response = new Response(record, {
      headers: { "Cache-Control": `public, max-age=${this.options.tagTtlSeconds}`, "Content-Type": "application/json" },
    });
    const work = timed(this.meter, "put", async () =>
      (await this.open()).put(Paths.cacheTag(origin, name, tag), response),
    ).catch(() => undefined);
    this.options.waitUntil(work);
    return work;
  }

  /** Forgets a tag here (it moved or was deleted at this location: seen at once here). */
  async forgetTag(name: string, tag: string): Promise<void> {
    const origin = this.options.origin;
    if (!origin || this.options.tagTtlSeconds === 0) return;
    await timed(this.meter, "delete", async () => (await this.open()).delete(Paths.cacheTag(origin, name, tag))).catch(
      () => undefined,
    );
  }
}

const BYPASS = new EdgeCache({ origin: null, maxBytes: 0, tagTtlSeconds: 0, waitUntil: () => undefined });
