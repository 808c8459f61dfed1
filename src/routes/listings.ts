import { Hono } from "hono";
import { RegistryError } from "../oci/errors";
import { catalogOf } from "../registry/registry";
import { MAX_PAGE } from "../registry/registry";
import { nextPageLink, pageQuery, paginate, repositoryName, requestedRepository, type AppEnv } from "./http";

export const listingRoutes = new Hono<AppEnv>();

listingRoutes.get("/_catalog", async (c) => {
  const catalog = catalogOf(c.env);
  const repositories = await paginate(
    c,
    "/v2/_catalog",
    (limit, last) => catalog.list(limit, last),
    (name) => name,
  );
  return c.json({ repositories });
});

listingRoutes.get("/:name{.+}/tags/list", async (c) => {
  // Named as asked (a mirrored name's tags are listed under it, not the name stored as).
  const name = repositoryName(c);
  const repository = requestedRepository(c, { edge: false });
  if (!(await repository.exists())) throw new RegistryError("NAME_UNKNOWN", undefined, { name });
  const { n, last } = pageQuery(c);
  const page = await repository.listTagsPage(n, last);
  if (page.next !== undefined) {
    c.header("Link", nextPageLink(`/v2/${name}/tags/list`, Math.min(MAX_PAGE, n ?? MAX_PAGE), page.next));
  }
  return c.json({ name, tags: page.tags });
});
