import { settingsOf } from "../settings/settings";
import { digestOf, digestOrNull, type Digest } from "../oci/digest";
import { RegistryError, unavailable } from "../oci/errors";
import { MAX_MANIFEST_BYTES, type ParsedManifest } from "../oci/manifest";
import { essence, MediaTypes } from "../oci/media-types";
import type { BlobDescriptor } from "../registry/blob-store";
import { chunksOf, pump } from "../registry/streams";
import { currentMeter, metered, meterOnEnv } from "../registry/meter";
import { SYSTEM_CONTEXT, plainContext, type ChangeContext } from "../registry/changes";
import type { EdgeCache } from "../registry/edge-cache";
import { EMBEDDED_CONTENT_MAX_BYTES, encodeContent } from "../registry/linked-blob-store";
import type { Reference } from "../registry/manifests";
import { openRepository, type Repository } from "../registry/registry";
import type { PassThroughBlob } from "../registry/repository";
import type { TagRecord } from "../registry/tags";
import {
  BYTE_REQUEST_ARGS,
  fillSessionName,
  type ByteRequestArgs,
  type SessionResult,
} from "../uploads/upload-session";
import { readBody, UpstreamClient, upstreamError, UpstreamUnreachable, type UpstreamRequest } from "./upstream-client";
import type { MirroredName } from "../settings/upstreams";

/** What a manifest request asks the upstream to send: every manifest type this registry serves. */
const MANIFEST_ACCEPT = [
  MediaTypes.ociIndex,
  MediaTypes.ociManifest,
  MediaTypes.dockerManifestList,
  MediaTypes.dockerManifest,
].join(", ");

/** An upstream blob answer passed on to the client: the whole blob, verified on the way. */
export type UpstreamBlob = PassThroughBlob;

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
    context: ChangeContext = SYSTEM_CONTEXT,
  ) {
    // What the mirror stores is attributed to it, within the request that made it fetch.
    this.repository = openRepository(env, name.local, {
      edge,
      context: plainContext(context, { kind: "mirror", name: name.upstream.prefix }),
    });
    this.client = new UpstreamClient(name.upstream, meterOnEnv(env));
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
        const { link, descriptor, content } = await this.repository.statRevision(reference.digest);
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
    const stored = await this.repository.resolveTagAtEdge(tag);
    const now = Date.now();
    if (stored?.checkedAt !== undefined && now - stored.checkedAt < this.name.upstream.tagTtlSeconds * 1000) {
      return stored;
    }
    try {
      // Nothing stored: one GET does it.
      if (!stored) return await this.fetchManifest(tag, undefined, tag);
      const head = await this.ask(
        { method: "HEAD", path: this.path("manifests", tag), headers: { Accept: MANIFEST_ACCEPT }, scope: this.scope },
        { tag },
      );
      if (!head.ok) {
        const error = upstreamError(head, "MANIFEST_UNKNOWN", { tag, upstream: this.name.upstream.prefix });
        if (head.status === 404) throw error;
        this.log("serving the stored tag: the upstream failed", { tag, status: head.status });
        return stored;
      }
      const upstreamDigest = head.headers.get("Docker-Content-Digest");
      if (upstreamDigest === stored.digest.value) {
        const record: TagRecord = { ...stored, checkedAt: now };
        await this.repository.confirmMirroredTag(tag, record);
        return record;
      }
      // Fetched by the digest the HEAD named (so a tag moving meanwhile cannot mix two
      // manifests), or by tag when the upstream did not say.
      const named = upstreamDigest ? digestOrNull(upstreamDigest) : null;
      return await this.fetchManifest(named ? named.value : tag, named ?? undefined, tag);
    } catch (error) {
      const failed =
        error instanceof RegistryError && (error.code === "UNAVAILABLE" || error.code === "TOOMANYREQUESTS");
      if (stored && failed) {
        this.log("serving the stored tag: the upstream failed", { tag, error: String(error) });
        return stored;
      }
      throw error;
    }
  }

  /**
   * GETs a manifest from the upstream, checks it (its digest, when one was asked for or
   * announced; that it parses), stores it (and tags it, for a tag), and returns its record.
   */
  private async fetchManifest(reference: string, expected?: Digest, tag?: string): Promise<TagRecord> {
    const detail = { reference, upstream: this.name.upstream.prefix };
    const response = await this.ask(
      {
        method: "GET",
        path: this.path("manifests", reference),
        headers: { Accept: MANIFEST_ACCEPT },
        scope: this.scope,
      },
      detail,
    );
    if (!response.ok) {
      await response.body?.cancel();
      throw upstreamError(response, "MANIFEST_UNKNOWN", detail);
    }
    let bytes: Uint8Array<ArrayBuffer>;
    try {
      bytes = await readBody(response, MAX_MANIFEST_BYTES, this.name.upstream.timeoutMs);
    } catch (error) {
      if (error instanceof UpstreamUnreachable) throw this.unreachable(error, detail);
      throw error;
    }
    const digest = await digestOf(bytes, expected?.algorithm ?? "sha256");
    if (expected && digest.value !== expected.value) {
      throw unavailable("the upstream sent a manifest that does not match its digest", {
        ...detail,
        expected: expected.value,
        computed: digest.value,
      });
    }
    const contentType = essence(response.headers.get("Content-Type"));
    let manifest: ParsedManifest;
    try {
      ({ manifest } = await this.repository.putManifest(tag ? { tag } : { digest }, bytes, contentType, {
        mirroredAt: Date.now(),
        maxReferences: settingsOf(this.env).manifestMaxReferences,
      }));
    } catch (error) {
      // The upstream's manifest, not the client's: one this registry cannot serve (schema 1,
      // not JSON, too many references) is the upstream failing (a stored tag is served).
      if (error instanceof RegistryError && error.code === "MANIFEST_INVALID") {
        throw new RegistryError(
          "UNAVAILABLE",
          `the upstream's manifest cannot be served by this registry: ${error.message}`,
          detail,
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
   * - Stored already (pulled through another name, or pushed, maybe to a private
   *   repository): linked here only once the upstream proves it has those bytes, so a
   *   mirrored name never hands out a blob of another repository. The upstream's own
   *   answer to a HEAD (not a redirect: anyone can be redirected to) naming both the
   *   digest and the stored size is that proof; then the blob is served as usual (returns
   *   its descriptor). Without it, the upstream's bytes are the proof: they are fetched as
   *   for a blob not stored, and the blob is linked once they hashed to the digest.
   * - Otherwise fetched whole (`Range` is not passed on: a part cannot be checked against
   *   the digest; the answer is the whole blob, as HTTP allows, and a stored blob serves
   *   ranges). A GET streams to the client while the same bytes go into R2 through the
   *   digest's fill (`fill`), verified before anything is published; a HEAD is answered
   *   from the upstream's HEAD (no bytes to check).
   * Every body is sent with its length and hashed on the way, its last chunk held back
   * until the whole matched: bytes that do not match the digest end the answer short of
   * its length, which every client sees as a failure (workerd ends a chunked answer whose
   * stream failed as if it were whole, so a body is never sent without its length).
   */
  async blob(
    digest: Digest,
    method: string,
    waitUntil: (work: Promise<unknown>) => void,
  ): Promise<UpstreamBlob | { descriptor: BlobDescriptor }> {
    const stored = await this.repository.storedBlob(digest);
    const detail = { digest: digest.value, upstream: this.name.upstream.prefix };
    const ask = (askMethod: "GET" | "HEAD", follow: boolean) =>
      this.ask({ method: askMethod, path: this.path("blobs", digest.value), scope: this.scope, follow }, detail);
    let head: Response | null = null;
    if (stored) {
      head = await ask("HEAD", false);
      await head.body?.cancel();
      if (
        head.status === 200 &&
        head.headers.get("Docker-Content-Digest") === digest.value &&
        lengthOf(head) === stored.size
      ) {
        await this.repository.linkMirroredBlob(digest, stored);
        return { descriptor: stored };
      }
      if (head.status >= 300 && head.status < 400) head = null;
      else if (!head.ok) throw upstreamError(head, "BLOB_UNKNOWN", detail);
      this.log("a stored blob not proven by the upstream's HEAD: its bytes are fetched", {
        ...detail,
        status: head?.status ?? "redirect",
      });
    }
    const headers: Record<string, string> = {
      "Docker-Content-Digest": digest.value,
      "Content-Type": "application/octet-stream",
    };
    if (method === "HEAD") {
      head ??= await ask("HEAD", true);
      await head.body?.cancel();
      if (!head.ok) throw upstreamError(head, "BLOB_UNKNOWN", detail);
      const size = lengthOf(head);
      const named = head.headers.get("Docker-Content-Digest");
      if (head.status !== 200 || size === undefined || (named !== null && named !== digest.value)) {
        throw unavailable("the upstream's answer does not describe this blob", { ...detail, status: head.status });
      }
      headers["Content-Length"] = String(size);
      return { status: 200, headers, body: null };
    }
    const response = await ask("GET", true);
    if (!response.ok) {
      await response.body?.cancel();
      throw upstreamError(response, "BLOB_UNKNOWN", detail);
    }
    const declared = lengthOf(response);
    // Its own length, or the stored blob's, or (a body of unknown length: a chunked
    // answer) what the upstream's HEAD says: framing only, the bytes are checked anyway.
    const size = declared ?? stored?.size ?? (await this.lengthFromHead(ask));
    if (response.status !== 200 || size === undefined || (stored && size !== stored.size)) {
      await response.body?.cancel();
      throw unavailable(
        size === undefined
          ? "the upstream sent this blob without its length; retry"
          : "the upstream's answer is not this blob",
        { ...detail, status: response.status },
      );
    }
    Object.assign(headers, {
      "Content-Length": String(size),
      ETag: `"${digest.value}"`,
      "Cache-Control": "max-age=31536000, immutable",
      "Accept-Ranges": "bytes",
    });
    const upstreamBody = response.body ?? new Response("").body ?? new ReadableStream<Uint8Array>();
    let body: ReadableStream<Uint8Array>;
    if (stored) {
      // Linked once these bytes proved the upstream has the blob; not stored again.
      body = this.relay(digest, size, upstreamBody, waitUntil, stored);
    } else if (declared === undefined) {
      // Framed by the HEAD's word: served, checked on the way, not stored.
      body = this.relay(digest, size, upstreamBody, waitUntil);
    } else {
      body = await this.fill(digest, size, upstreamBody, waitUntil);
    }
    return { status: 200, headers, body };
  }

  /** The length the upstream's HEAD gives a blob, if it answers one. */
  private async lengthFromHead(
    ask: (method: "HEAD", follow: boolean) => Promise<Response>,
  ): Promise<number | undefined> {
    const head = await ask("HEAD", true);
    await head.body?.cancel();
    return head.status === 200 ? lengthOf(head) : undefined;
  }

  /**
   * Streams an upstream body of `size` bytes to the client, hashed on the way (`pump`):
   * bytes that do not match the digest end it short of its length. `linkOnMatch`: the
   * stored blob to link once they matched (after the answer).
   */
  private relay(
    digest: Digest,
    size: number,
    body: ReadableStream<Uint8Array>,
    waitUntil: (work: Promise<unknown>) => void,
    linkOnMatch?: BlobDescriptor,
  ): ReadableStream<Uint8Array> {
    const client = new FixedLengthStream(size);
    const pumped = pump(chunksOf(body, this.name.upstream.timeoutMs), [client.writable.getWriter()], digest);
    if (linkOnMatch) {
      waitUntil(
        pumped
          .then(async (matched) => {
            if (matched) await this.repository.linkMirroredBlob(digest, linkOnMatch);
          })
          .catch((error: unknown) =>
            this.log("the upstream proved a stored blob, but linking it failed", {
              digest: digest.value,
              error: String(error),
            }),
          ),
      );
    }
    return client.readable;
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
    const fillLease = await metered("do", "call", () => stub.reserveFill(), meterOnEnv(this.env)).catch(() => null);
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
        // What the fill stores is the mirror's, within the request that made it fetch.
        context: this.repository.context,
      };
      const request = new Request("https://upload-session/", {
        method: "POST",
        headers: { [BYTE_REQUEST_ARGS]: JSON.stringify(args) },
        body: store.readable,
      });
      // The fill's call ends after this answer's headers went out: counted now (its own
      // storage calls are the upload engine's, inside the object, as for any upload).
      currentMeter(this.env)?.record("do", "fetch", 0);
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
  async tags(
    n: number | undefined,
    last: string | undefined,
    requestedName: string,
  ): Promise<{ tags: string[]; next?: string } | null> {
    const params = new URLSearchParams();
    if (n !== undefined) params.set("n", String(n));
    if (last !== undefined) params.set("last", last);
    const query = params.size > 0 ? `?${params.toString()}` : "";
    let response: Response;
    try {
      response = await this.ask(
        {
          method: "GET",
          path: `${this.path("tags/list")}${query}`,
          headers: { Accept: "application/json" },
          scope: this.scope,
        },
        { name: requestedName },
      );
    } catch (error) {
      if (error instanceof RegistryError && error.code === "UNAVAILABLE") return null;
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
    const nextQuery = link ? /<[^>?]*(\?[^>]*)>;\s*rel="?next"?/.exec(link)?.[1] : undefined;
    const next = nextQuery ? new URLSearchParams(nextQuery).get("last") : null;
    return next ? { tags: names, next } : { tags: names };
  }

  /** One request to the upstream; one that could not be made is a 503 (`unreachable`). */
  private async ask(request: UpstreamRequest, detail: Record<string, unknown>): Promise<Response> {
    try {
      return await this.client.fetch(request);
    } catch (error) {
      if (error instanceof UpstreamUnreachable) throw this.unreachable(error, detail);
      throw error;
    }
  }

  /**
   * The error for an upstream that could not be asked or broke off: it names the mirror's
   * prefix, never the upstream's address (a client may be anonymous, the upstream an
   * internal host); what happened, addresses included, goes to the log.
   */
  private unreachable(error: UpstreamUnreachable, detail: Record<string, unknown>): RegistryError {
    this.log("the upstream could not be asked", { ...detail, reason: error.message });
    return unavailable(`the upstream registry of ${this.name.upstream.prefix} did not answer; retry`, {
      ...detail,
      upstream: this.name.upstream.prefix,
    });
  }

  private log(message: string, detail: Record<string, unknown>): void {
    console.warn(`mirror ${this.name.local}: ${message}`, JSON.stringify(detail));
  }
}

/** An answer's Content-Length, when it declares one. */
function lengthOf(response: Response): number | undefined {
  const length = response.headers.get("Content-Length");
  return length !== null && /^\d+$/.test(length) ? Number(length) : undefined;
}
