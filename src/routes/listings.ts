import { Hono } from "hono";
import { RegistryError } from "../oci/errors";
import { Catalog } from "../registry/catalog";
import { openRepository } from "../registry/registry";
import { storageOf } from "../registry/storage";
import { paginate, repositoryName, type AppEnv } from "./http";

export const listingRoutes = new Hono<AppEnv>();

listingRoutes.get("/_catalog", async (c) => {
  const catalog = new Catalog(storageOf(c.env).bucket);
  const repositories = await paginate(
    c,
    "/v2/_catalog",
    (limit, last) => catalog.list(limit, last),
    (name) => name,
  );
  return c.json({ repositories });
});

listingRoutes.get("/:name{.+}/tags/list", async (c) => {
  const name = repositoryName(c);
  if (!(await new Catalog(storageOf(c.env).bucket).exists(name)))
    throw new RegistryError("NAME_UNKNOWN", undefined, { name });
  const tags = openRepository(c.env, name).tags;
  const page = await paginate(
    c,
    `/v2/${name}/tags/list`,
    (limit, last) => tags.list(limit, last),
    (tag) => tag,
  );
  return c.json({ name, tags: page });
});
