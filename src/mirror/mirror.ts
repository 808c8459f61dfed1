import { readConfig } from "../config";
import { digestOf, digestOrNull, type Digest } from "../oci/digest";
import { RegistryError, unavailable } from "../oci/errors";
import { MAX_MANIFEST_BYTES, type ParsedManifest } from "../oci/manifest";
import { essence, MediaTypes } from "../oci/media-types";
import { chunksOf, pump, type BlobDescriptor } from "../registry/blob-store";
import { currentMeter, metered } from "../registry/meter";
import type { EdgeCache } from "../registry/edge-cache";
import { EMBEDDED_CONTENT_MAX_BYTES, encodeContent } from "../registry/linked-blob-store";
import type { Reference } from "../registry/manifests";
import { openRepository, type Repository } from "../registry/registry";
import type { TagRecord } from "../registry/tags";
import {
  BYTE_REQUEST_ARGS,
  fillSessionName,
  type ByteRequestArgs,
  type SessionResult,
} from "../uploads/upload-session";
import { readBody, UpstreamClient, upstreamError, UpstreamUnreachable } from "./upstream-client";
import type { MirroredName } from "./upstreams";

/** What a manifest request asks the upstream to send: every manifest type this registry serves. */
const MANIFEST_ACCEPT = [
  MediaTypes.ociIndex,
  MediaTypes.ociManifest,
  MediaTypes.dockerManifestList,
  MediaTypes.dockerManifest,
].join(", ");

/** An upstream blob answer passed on to the client. */
export interface UpstreamBlob {
  status: 200 | 206;
  headers: Record<string, string>;
  body: ReadableStream<Uint8Array> | null;
}

/**
 * A pull-through mirror of one upstream repository (docs/architecture.md, "Mirroring"):
 * what is stored under the local name is served as any repository's content is, and
 * what is missing is fetched from the upstream, verified, stored through the same paths
 * a push takes (so garbage collection, the edge caches and the integrity check treat it
 * like anything else), and served.
 */
export class Mirror {
  readonly repository: Repository;
  private readonly client: UpstreamClient;
  private readonly scope: string;

  constructor(
    private readonly env: Env,
    readonly name: MirroredName,
    edge: EdgeCache,
  ) {
    this.repository = openRepository(env, name.local, edge);
    this.client = new UpstreamClient(env, name.upstream);
    this.scope = `repository:${name.remote}:pull`;
  }

  private path(kind: "manifests" | "blobs" | "tags/list", reference = ""): string {
    return `${this.name.remote}/${kind}${reference ? `/${reference}` : ""}`;
  }

  /**
   * Makes sure the manifest a reference names is stored, and a tag fresh, before it is
   * served; returns the record to serve from (undefined: the route reads it as usual).
   * - By digest: stored once, fetched only when missing (immutable).
   * - By tag: served as stored while the upstream confirmed it within the upstream's
   *   `tagTtlSeconds`; after that, a HEAD asks the upstream for the tag's digest, and the
   *   manifest is fetched only when it changed. If the upstream cannot answer (down, slow,
   *   failing, rate-limiting), the stored tag is served and the event logged; a 404 from
   *   the upstream is the tag's absence there, and is passed on.
   */
  async manifest(reference: Reference): Promise<TagRecord | undefined> {
    if ("digest" in reference) {
      try {
        // Stored: served from what this read found (the route reads nothing more).
        const { link, descriptor, content } = await this.repository.revisions.stat(reference.digest, {
          unknownCode: "MANIFEST_UNKNOWN",
        });
        if (link.mediaType === undefined) return undefined;
        const record: TagRecord = { digest: reference.digest, mediaType: link.mediaType, size: descriptor.size };
        if (content !== undefined) record.content = content;
        return record;
      } catch (error) {
        if (!(error instanceof RegistryError && error.code === "MANIFEST_UNKNOWN")) throw error;
      }
      return this.fetchManifest(reference.digest.value, reference.digest);
    }
    const tag = reference.tag;
    const stored = await this.repository.tags.resolveAtEdge(tag);
    const now = Date.now();
    if (stored?.checkedAt !== undefined && now - stored.checkedAt < this.name.upstream.tagTtlSeconds * 1000) {
      return stored;
    }
    try {
      // Nothing stored: one GET does it.
      if (!stored) return await this.fetchManifest(tag, undefined, tag);
      const head = await this.client.fetch({
        method: "HEAD",
        path: this.path("manifests", tag),
        headers: { Accept: MANIFEST_ACCEPT },
        scope: this.scope,
      });
      if (!head.ok) {
        const error = upstreamError(head, "MANIFEST_UNKNOWN", { tag, upstream: this.name.upstream.prefix });
        if (head.status === 404) throw error;
        this.log("serving the stored tag: the upstream failed", { tag, status: head.status });
        return stored;
      }
      const upstreamDigest = head.headers.get("Docker-Content-Digest");
      if (upstreamDigest === stored.digest.value) {
        const record: TagRecord = { ...stored, checkedAt: now };
        await this.repository.tags.set(tag, record);
        return record;
      }
      // Fetched by the digest the HEAD named (so a tag moving meanwhile cannot mix two
      // manifests), or by tag when the upstream did not say.
      const named = upstreamDigest ? digestOrNull(upstreamDigest) : null;
      return await this.fetchManifest(named ? named.value : tag, named ?? undefined, tag);
    } catch (error) {
      const failed =
        error instanceof UpstreamUnreachable ||
        (error instanceof RegistryError && (error.code === "UNAVAILABLE" || error.code === "TOOMANYREQUESTS"));
      if (stored && failed) {
        this.log("serving the stored tag: the upstream failed", { tag, error: String(error) });
        return stored;
      }
      if (error instanceof UpstreamUnreachable)
        throw unavailable(error.message, { upstream: this.name.upstream.prefix });
      throw error;
    }
  }

  /**
   * GETs a manifest from the upstream, checks it (its digest, when one was asked for or
   * announced; that it parses), stores it (and tags it, for a tag), and returns its record.
   */
  private async fetchManifest(reference: string, expected?: Digest, tag?: string): Promise<TagRecord> {
    let response: Response;
    try {
      response = await this.client.fetch({
        method: "GET",
        path: this.path("manifests", reference),
        headers: { Accept: MANIFEST_ACCEPT },
        scope: this.scope,
      });
    } catch (error) {
      if (error instanceof UpstreamUnreachable)
        throw unavailable(error.message, { upstream: this.name.upstream.prefix });
      throw error;
    }
    if (!response.ok) {
      await response.body?.cancel();
      throw upstreamError(response, "MANIFEST_UNKNOWN", { reference, upstream: this.name.upstream.prefix });
    }
    let bytes: Uint8Array<ArrayBuffer>;
    try {
      bytes = await readBody(response, MAX_MANIFEST_BYTES, this.name.upstream.timeoutMs);
    } catch (error) {
      if (error instanceof UpstreamUnreachable)
        throw unavailable(error.message, { upstream: this.name.upstream.prefix });
      throw error;
    }
    const digest = await digestOf(bytes, expected?.algorithm ?? "sha256");
    if (expected && digest.value !== expected.value) {
      throw unavailable("the upstream sent a manifest that does not match its digest", {
        expected: expected.value,
        computed: digest.value,
      });
    }
    const contentType = essence(response.headers.get("Content-Type"));
    let manifest: ParsedManifest;
    try {
      ({ manifest } = await this.repository.manifests.put(tag ? { tag } : { digest }, bytes, contentType, {
        mirroredAt: Date.now(),
        maxReferences: readConfig(this.env).manifestMaxReferences,
      }));
    } catch (error) {
      // The upstream's manifest, not the client's: one this registry cannot serve (schema 1,
      // not JSON, too many references) is the upstream failing (a stored tag is served).
      if (error instanceof RegistryError && error.code === "MANIFEST_INVALID") {
        throw new RegistryError(
          "UNAVAILABLE",
          `the upstream's manifest cannot be served by this registry: ${error.message}`,
          { reference, upstream: this.name.upstream.prefix },
        );
      }
      throw error;
    }
    const record: TagRecord = { digest, mediaType: manifest.mediaType, size: bytes.byteLength, checkedAt: Date.now() };
    if (bytes.byteLength <= EMBEDDED_CONTENT_MAX_BYTES) record.content = encodeContent(bytes);
    return record;
  }

  /**
   * A blob the local repository does not link yet.
   * - Stored already (pulled through another name, or pushed): linked here once the
   *   upstream confirms this repository has it (a HEAD), so a mirrored name never reveals
   *   a blob of another repository; then served as usual (returns its descriptor).
   * - Otherwise fetched: a HEAD, or a range, is answered from the upstream without
   *   storing; a whole GET streams to the client while the same bytes go into R2 through
   *   the digest's fill (`fill`), verified before anything is published.
   */
  async blob(
    digest: Digest,
    method: string,
    range: string | undefined,
    waitUntil: (work: Promise<unknown>) => void,
  ): Promise<UpstreamBlob | { descriptor: BlobDescriptor }> {
    const stored = await this.repository.blobs.stat(digest, { strong: true });
    const detail = { digest: digest.value, upstream: this.name.upstream.prefix };
    const ask = async (askMethod: "GET" | "HEAD", headers: Record<string, string> = {}, follow = true) => {
      try {
        return await this.client.fetch({
          method: askMethod,
          path: this.path("blobs", digest.value),
          headers,
          scope: this.scope,
          follow,
        });
      } catch (error) {
        if (error instanceof UpstreamUnreachable) throw unavailable(error.message, detail);
        throw error;
      }
    };
    if (stored) {
      // The upstream's own answer confirms it: a redirect to its CDN is not followed (a
      // CDN may sign GETs only), and what it says of the blob must be what is stored.
      const head = await ask("HEAD", {}, false);
      await head.body?.cancel();
      const redirected = head.status >= 300 && head.status < 400;
      if (!head.ok && !redirected) throw upstreamError(head, "BLOB_UNKNOWN", detail);
      const named = head.headers.get("Docker-Content-Digest");
      const length = head.headers.get("Content-Length");
      if (
        (named !== null && named !== digest.value) ||
        (head.ok && length !== null && Number(length) !== stored.size)
      ) {
        throw unavailable("the upstream's answer for this blob does not match it", detail);
      }
      await this.repository.layers.link(digest, stored);
      return { descriptor: stored };
    }
    const response = await ask(method === "HEAD" ? "HEAD" : "GET", range ? { Range: range } : {});
    if (!response.ok) {
      await response.body?.cancel();
      throw upstreamError(response, "BLOB_UNKNOWN", detail);
    }
    const headers: Record<string, string> = {
      "Docker-Content-Digest": digest.value,
      "Content-Type": "application/octet-stream",
    };
    const length = response.headers.get("Content-Length");
    const size = length !== null && /^\d+$/.test(length) ? Number(length) : undefined;
    if (size !== undefined) headers["Content-Length"] = String(size);
    if (method === "HEAD") {
      return { status: 200, headers, body: null };
    }
    if (response.status === 206) {
      // A part of the blob: passed on as it is (a part cannot be checked against the
      // digest; the client checks the whole), and not stored.
      const contentRange = response.headers.get("Content-Range");
      if (contentRange) headers["Content-Range"] = contentRange;
      return { status: 206, headers, body: response.body };
    }
    const body = response.body ?? new Response("").body ?? new ReadableStream<Uint8Array>();
    headers.ETag = `"${digest.value}"`;
    headers["Cache-Control"] = "max-age=31536000, immutable";
    if (size === undefined) {
      // Of unknown length (a chunked answer): checked against the digest on the way (cut
      // short if it does not match), not stored.
      const { readable, writable } = new IdentityTransformStream();
      const idleMs = this.name.upstream.timeoutMs;
      void pump(chunksOf(body, idleMs), [writable.getWriter() as WritableStreamDefaultWriter<Uint8Array>], digest);
      return { status: 200, headers, body: readable as ReadableStream<Uint8Array> };
    }
    headers["Accept-Ranges"] = "bytes";
    return { status: 200, headers, body: await this.fill(digest, size, body, waitUntil) };
  }

  /**
   * Streams an upstream body to the client and, when this pull wins the digest's fill lease
   * (UploadSession.reserveFill: one fill per digest at a time), in step to the fill object,
   * which stores it through the upload engine. The two advance together (pump), so memory
   * stays at a chunk or two whatever their speeds; the fill failing or falling behind drops
   * it and the client's stream goes on. Either way the bytes are hashed on the way: bytes
   * that do not match the digest fail the client's answer, and are never published.
   */
  private async fill(
    digest: Digest,
    size: number,
    body: ReadableStream<Uint8Array>,
    waitUntil: (work: Promise<unknown>) => void,
  ): Promise<ReadableStream<Uint8Array>> {
    const stub = this.env.UPLOADS.get(this.env.UPLOADS.idFromName(fillSessionName(digest.value)));
    // Not reaching the fill object only means not storing this time.
    const fillLease = await metered("do", "call", () => stub.reserveFill()).catch(() => null);
    const client = new FixedLengthStream(size);
    const writers = [client.writable.getWriter()];
    let filled: Promise<SessionResult<BlobDescriptor> | null> = Promise.resolve(null);
    if (fillLease) {
      const store = new FixedLengthStream(size);
      const storeWriter = store.writable.getWriter();
      writers.push(storeWriter);
      const args: ByteRequestArgs = {
        operation: "fill",
        name: this.name.local,
        digest: digest.value,
        declared: { length: size },
        fillLease,
        hasBody: true,
      };
      const request = new Request("https://upload-session/", {
        method: "POST",
        headers: { [BYTE_REQUEST_ARGS]: JSON.stringify(args) },
        body: store.readable,
      });
      // The fill's call ends after this answer's headers went out: counted now (its own
      // storage calls are the upload engine's, inside the object, as for any upload).
      currentMeter()?.record("do", "fetch", 0);
      filled = stub
        .fetch(request)
        .then(async (answer) => (await answer.json()) as SessionResult<BlobDescriptor>)
        .catch((error: unknown): SessionResult<BlobDescriptor> => ({
          ok: false,
          error: { code: "UNAVAILABLE", status: 503, message: String(error) },
        }));
      // An answer before the last byte means the fill took no more (it failed): stop
      // writing to it, so the client's stream does not wait on it.
      void filled.then(() => storeWriter.abort(new Error("the fill ended")).catch(() => undefined));
    }
    // An upstream that stops sending for its timeout fails the answer (and frees the fill).
    const pumped = pump(chunksOf(body, this.name.upstream.timeoutMs), writers, digest);
    waitUntil(
      Promise.all([pumped, filled]).then(([verified, result]) => {
        if (result && !result.ok) {
          this.log("a blob was served from the upstream, but storing it failed", {
            digest: digest.value,
            verified,
            reason: result.error.message,
          });
        }
      }),
    );
    return client.readable;
  }

  /**
   * The upstream's tag list (paginated as the client asked, the next page's link
   * pointing here), or null when the upstream cannot answer: the stored tags are served.
   */
  async tags(query: string, requestedName: string): Promise<{ tags: string[]; link?: string } | null> {
    let response: Response;
    try {
      response = await this.client.fetch({
        method: "GET",
        path: `${this.path("tags/list")}${query}`,
        headers: { Accept: "application/json" },
        scope: this.scope,
      });
    } catch (error) {
      if (error instanceof UpstreamUnreachable) return null;
      throw error;
    }
    if (response.status === 404) {
      await response.body?.cancel();
      throw new RegistryError("NAME_UNKNOWN", undefined, { name: requestedName });
    }
    if (!response.ok) {
      await response.body?.cancel();
      return null;
    }
    let body: unknown;
    try {
      const bytes = await readBody(response, MAX_MANIFEST_BYTES, this.name.upstream.timeoutMs);
      body = JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      return null;
    }
    const tags = (typeof body === "object" && body !== null ? (body as { tags?: unknown }).tags : null) ?? [];
    if (!Array.isArray(tags)) return null;
    const names = tags.filter((tag): tag is string => typeof tag === "string");
    const link = response.headers.get("Link");
    const next = link ? /<[^>?]*(\?[^>]*)>;\s*rel="?next"?/.exec(link)?.[1] : undefined;
    return next ? { tags: names, link: `</v2/${requestedName}/tags/list${next}>; rel="next"` } : { tags: names };
  }

  private log(message: string, detail: Record<string, unknown>): void {
    console.warn(`mirror ${this.name.local}: ${message}`, JSON.stringify(detail));
  }
}
