import { Hono } from "hono";
import { settingsOf } from "../settings/settings";
import { parseDigest } from "../oci/digest";
import { RegistryError } from "../oci/errors";
import type { BlobDescriptor, ByteRange } from "../registry/registry";
import { presignedUrl, redirectSettings } from "../registry/blob-redirect";
import {
  edgeCacheFor,
  notModified,
  requestedRepository,
  requestedRepositoryFor,
  routeRequestOf,
  type AppEnv,
  type RouteRequest,
} from "./http";

export const blobRoutes = new Hono<AppEnv>();

/**
 * Parses a single `Range: bytes=a-b` (or `a-`, or `-n`) against the blob's size.
 * Returns undefined when the whole blob should be served: no Range, a unit other than
 * bytes (RFC 9110 says to ignore it), a malformed value, or several ranges (the spec
 * lets a server answer those with the whole representation, which every client
 * handles, rather than multipart/byteranges, which registry clients do not expect).
 * Throws RANGE_INVALID (416) when the range lies wholly past the end.
 */
function byteRange(header: string | undefined, size: number): ByteRange | undefined {
  const match = header === undefined ? null : /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!match) return undefined;
  const [, first = "", second = ""] = match;
  if (first === "" && second === "") return undefined;
  const unsatisfiable = () =>
    new RegistryError("RANGE_INVALID", undefined, { range: header, size }, { "Content-Range": `bytes */${size}` });
  let start: number;
  let end: number;
  if (first === "") {
    const suffix = Number(second);
    if (suffix === 0 || size === 0) throw unsatisfiable();
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(first);
    end = second === "" ? size - 1 : Math.min(Number(second), size - 1);
    if (second !== "" && Number(second) < start) return undefined;
  }
  if (start >= size) throw unsatisfiable();
  return { start, end };
}

/** A blob's answer headers (the answer is made once, with all of them: routes/dispatch.ts). */
function blobHeaders(descriptor: BlobDescriptor): Record<string, string> {
  return {
    "Docker-Content-Digest": descriptor.digest,
    ETag: `"${descriptor.digest}"`,
    "Accept-Ranges": "bytes",
    "Content-Type": "application/octet-stream",
    // Content addressed: the bytes under a digest never change.
    "Cache-Control": "max-age=31536000, immutable",
  };
}

/**
 * GET or HEAD of a blob of the repository the request names (the route's, and the pull
 * path's); for a mirrored name one not stored yet may come from the upstream (a
 * pass-through answer: whole, verified on the way).
 */
export async function serveBlob(request: RouteRequest, name: string, digestText: string): Promise<Response> {
  const repository = requestedRepositoryFor(request, name, { edge: false });
  const method = request.raw.method;
  const located = await repository.locateBlob(parseDigest(digestText), {
    method,
    waitUntil: (work) => request.waitUntil(work),
  });
  if ("passThrough" in located) {
    const { status, headers, body } = located.passThrough;
    return new Response(method === "HEAD" ? null : body, { status, headers });
  }
  const { descriptor } = located;
  const headers = blobHeaders(descriptor);
  const requestHeaders = request.raw.headers;
  if (notModified(requestHeaders.get("If-None-Match") ?? undefined, descriptor.digest))
    return new Response(null, { status: 304, headers });
  const range = byteRange(requestHeaders.get("Range") ?? undefined, descriptor.size);
  const status = range ? 206 : 200;
  if (range) headers["Content-Range"] = `bytes ${range.start}-${range.end}/${descriptor.size}`;
  headers["Content-Length"] = String(range ? range.end - range.start + 1 : descriptor.size);
  if (method === "HEAD") return new Response(null, { status, headers });
  // Large blobs may go straight from R2 to the client (off by default; blob-redirect.ts).
  const redirect = redirectSettings(request.env);
  if (redirect && descriptor.size >= redirect.minBytes) {
    // The object must be there (a stale descriptor copy can name one that is gone), and
    // the answer must not be kept by any cache: the URL expires, the digest does not.
    const current = await repository.blobWithObject(descriptor);
    return new Response(null, {
      status: 307,
      headers: {
        "Docker-Content-Digest": descriptor.digest,
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "Content-Length": "0",
        "Cache-Control": "no-store",
        Location: await presignedUrl(redirect, current.key),
      },
    });
  }
  // The link was checked above: the bytes may come from this location's cache.
  const cache = edgeCacheFor(request);
  const cached = await cache.matchBlob(descriptor.digest, descriptor.size, range);
  if (cached?.body) return new Response(cached.body, { status, headers });
  if (!range && cache.holds(descriptor.size)) {
    const { body, copy, verified } = await repository.openBlobTwice(descriptor);
    void cache.putBlob(descriptor.digest, descriptor.size, copy, verified);
    return new Response(body, { status, headers });
  }
  return new Response(await repository.openBlob(descriptor, range), { status, headers });
}

blobRoutes.on(["GET", "HEAD"], "/:name{.+}/blobs/:digest", (c) =>
  serveBlob(routeRequestOf(c), c.req.param("name") ?? "", c.req.param("digest") ?? ""),
);

blobRoutes.delete("/:name{.+}/blobs/:digest", async (c) => {
  if (!settingsOf(c.env).deleteEnabled) throw new RegistryError("UNSUPPORTED", "deletion is disabled on this registry");
  await requestedRepository(c, { edge: false }).unlinkBlob(parseDigest(c.req.param("digest") ?? ""));
  return c.body(null, 202);
});
