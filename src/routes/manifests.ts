import { Hono } from "hono";
import { readConfig } from "../config";
import { RegistryError } from "../oci/errors";
import { MAX_MANIFEST_BYTES } from "../oci/manifest";
import { validateTag } from "../oci/names";
import { parseReference } from "../registry/manifests";
import { openRepository } from "../registry/registry";
import { notModified, readLimited, repositoryName, type AppContext, type AppEnv } from "./http";

export const manifestRoutes = new Hono<AppEnv>();

function manifestHeaders(c: AppContext, digest: string, mediaType: string, size: number): void {
  c.header("Content-Type", mediaType);
  c.header("Docker-Content-Digest", digest);
  c.header("ETag", `"${digest}"`);
  c.header("Content-Length", String(size));
}

manifestRoutes.on(["GET", "HEAD"], "/:name{.+}/manifests/:reference", async (c) => {
  const repository = openRepository(c.env, repositoryName(c));
  const reference = parseReference(c.req.param("reference"));
  if (c.req.method === "HEAD" || c.req.header("If-None-Match")) {
    const { digest, mediaType, size } = await repository.manifests.stat(reference);
    manifestHeaders(c, digest.value, mediaType, size);
    if (notModified(c, digest.value)) {
      c.header("Content-Length", undefined);
      return c.body(null, 304);
    }
    if (c.req.method === "HEAD") return c.body(null, 200);
  }
  const manifest = await repository.manifests.get(reference);
  manifestHeaders(c, manifest.digest.value, manifest.mediaType, manifest.bytes.byteLength);
  return c.body(manifest.bytes, 200);
});

manifestRoutes.put("/:name{.+}/manifests/:reference", async (c) => {
  const name = repositoryName(c);
  const repository = openRepository(c.env, name);
  const reference = parseReference(c.req.param("reference"));
  const config = readConfig(c.env);
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
  const { digest, manifest, tags } = await repository.manifests.put(
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
  if (!readConfig(c.env).deleteEnabled) throw new RegistryError("UNSUPPORTED", "deletion is disabled on this registry");
  const repository = openRepository(c.env, repositoryName(c));
  const reference = parseReference(c.req.param("reference"));
  await repository.manifests.delete(reference);
  return c.body(null, 202);
});
