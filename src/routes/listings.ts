import { Hono } from "hono";
import { RegistryError } from "../oci/errors";
import { catalogOf } from "../registry/registry";
import { paginate, repositoryName, repositoryOf, type AppEnv } from "./http";

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
  const name = repositoryName(c);
  const repository = repositoryOf(c, name, { edge: false });
  if (!(await repository.exists())) throw new RegistryError("NAME_UNKNOWN", undefined, { name });
  const page = await paginate(
    c,
    `/v2/${name}/tags/list`,
    (limit, last) => repository.listTags(limit, last),
    (tag) => tag,
  );
  return c.json({ name, tags: page });
});
