import { Hono } from "hono";
import { settingsOf } from "../settings/settings";
import { RegistryError } from "../oci/errors";
import { MAX_MANIFEST_BYTES } from "../oci/manifest";
import { validateTag } from "../oci/names";
import { looksLikeDigest } from "../oci/digest";
import { parseReference, type Reference } from "../registry/registry";
import {
  notModified,
  readLimited,
  requestedRepository,
  requestedRepositoryFor,
  routeRequestOf,
  type AppEnv,
  type RouteRequest,
} from "./http";

export const manifestRoutes = new Hono<AppEnv>();

/** A manifest's answer headers (the answer is made once, with all of them: routes/dispatch.ts). */
function manifestHeaders(digest: string, mediaType: string, size: number): Record<string, string> {
  return {
    "Content-Type": mediaType,
    "Docker-Content-Digest": digest,
    ETag: `"${digest}"`,
    "Content-Length": String(size),
  };
}

/**
 * A reference to read: a digest, or anything else as a tag. A tag the grammar refuses
 * names no manifest: 404 MANIFEST_UNKNOWN, as distribution answers and clients expect
 * (a PUT of such a tag is still 400 TAG_INVALID).
 */
function referenceToRead(text: string): Reference {
  if (looksLikeDigest(text)) return parseReference(text);
  try {
    return parseReference(text);
  } catch (error) {
    if (error instanceof RegistryError && error.code === "TAG_INVALID") {
      throw new RegistryError("MANIFEST_UNKNOWN", undefined, { tag: text.slice(0, 200) });
    }
    throw error;
  }
}

/** GET or HEAD of a manifest, of the repository the request names (the route's, and the pull path's). */
export async function serveManifest(request: RouteRequest, name: string, referenceText: string): Promise<Response> {
  const repository = requestedRepositoryFor(request, name);
  const reference = referenceToRead(referenceText);
  const method = request.raw.method;
  const ifNoneMatch = request.raw.headers.get("If-None-Match") ?? undefined;
  if (method === "HEAD" || ifNoneMatch) {
    const { digest, mediaType, size } = await repository.statManifest(reference);
    const headers = manifestHeaders(digest.value, mediaType, size);
    if (notModified(ifNoneMatch, digest.value)) {
      delete headers["Content-Length"];
      return new Response(null, { status: 304, headers });
    }
    if (method === "HEAD") return new Response(null, { status: 200, headers });
  }
  // A GET is a pull: told to the pull listeners, after the answer, when any asked.
  const manifest = await repository.getManifest(reference, undefined, {
    method,
    waitUntil: (work) => request.waitUntil(work),
  });
  const headers = manifestHeaders(manifest.digest.value, manifest.mediaType, manifest.bytes.byteLength);
  return new Response(manifest.bytes, { status: 200, headers });
}

manifestRoutes.on(["GET", "HEAD"], "/:name{.+}/manifests/:reference", (c) =>
  serveManifest(routeRequestOf(c), c.req.param("name") ?? "", c.req.param("reference") ?? ""),
);

manifestRoutes.put("/:name{.+}/manifests/:reference", async (c) => {
  const repository = requestedRepository(c);
  const name = repository.name;
  const reference = parseReference(c.req.param("reference"));
  const config = settingsOf(c.env);
  // `?tag=` (distribution-spec main): tag the pushed manifest with each, in one request.
  // Checked before the body is read: each tag is a write and an `OCI-Tag` header.
  const extraTags = (c.req.queries("tag") ?? []).map(validateTag);
  const tagCount = new Set([...("tag" in reference ? [reference.tag] : []), ...extraTags]).size;
  if (tagCount > config.manifestMaxTags) {
    throw new RegistryError(
      "TAG_INVALID",
      `a manifest PUT may set at most ${config.manifestMaxTags} tags; this one sets ${tagCount}`,
      { tags: tagCount, limit: config.manifestMaxTags },
    );
  }
  const bytes = await readLimited(c, MAX_MANIFEST_BYTES);
  const { digest, manifest, tags } = await repository.putManifest(
    reference,
    bytes,
    c.req.header("Content-Type") ?? "",
    { extraTags, maxReferences: config.manifestMaxReferences },
  );
  c.header("Location", `/v2/${name}/manifests/${digest.value}`);
  c.header("Docker-Content-Digest", digest.value);
  if (manifest.subject) c.header("OCI-Subject", manifest.subject.digest.value);
  for (const tag of tags) c.header("OCI-Tag", tag, { append: true });
  c.header("Content-Length", "0");
  return c.body(null, 201);
});

manifestRoutes.delete("/:name{.+}/manifests/:reference", async (c) => {
  if (!settingsOf(c.env).deleteEnabled) throw new RegistryError("UNSUPPORTED", "deletion is disabled on this registry");
  const repository = requestedRepository(c);
  await repository.deleteManifest(parseReference(c.req.param("reference")));
  return c.body(null, 202);
});
