import { Hono } from "hono";
import { parseDigest } from "../oci/digest";
import { MediaTypes } from "../oci/media-types";
import { paginate, repositoryName, requestedRepository, type AppEnv } from "./http";

export const referrerRoutes = new Hono<AppEnv>();

/**
 * The referrers API: an image index of the manifests whose `subject` is the digest.
 * An unknown subject has no referrers (an empty index, not a 404), as the spec says.
 * `?artifactType=` filters, and `OCI-Filters-Applied` says so.
 */
referrerRoutes.get("/:name{.+}/referrers/:digest", async (c) => {
  const name = repositoryName(c);
  const subject = parseDigest(c.req.param("digest"));
  const repository = requestedRepository(c, { edge: false });
  const artifactType = c.req.query("artifactType");
  const page = await paginate(
    c,
    `/v2/${name}/referrers/${subject.value}`,
    (limit, last) => repository.listReferrers(subject, limit, last),
    (entry) => entry.key,
    artifactType !== undefined ? { artifactType } : {},
  );
  const manifests = page.flatMap((entry) =>
    entry.descriptor && (artifactType === undefined || entry.descriptor.artifactType === artifactType)
      ? [entry.descriptor]
      : [],
  );
  if (artifactType !== undefined) c.header("OCI-Filters-Applied", "artifactType");
  c.header("Content-Type", MediaTypes.ociIndex);
  return c.body(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests }), 200);
});
