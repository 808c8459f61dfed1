import { Hono } from "hono";
import { RegistryError } from "../oci/errors";
import { catalogOf } from "../registry/registry";
import { MAX_PAGE } from "../registry/registry";
import { validateName } from "../oci/names";
import {
  nextPageLink,
  pageQuery,
  paginate,
  requestedRepositoryFor,
  routeRequestOf,
  type AppEnv,
  type RouteRequest,
} from "./http";

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

/**
 * GET of a repository's tags, a page of them (`query`: its `n` and `last`, read when the
 * listing starts). The route's, and the pull path's (which takes requests without a query).
 */
export async function serveTags(
  request: RouteRequest,
  nameText: string,
  query: () => { n: number | undefined; last: string | undefined },
): Promise<Response> {
  // Named as asked (a mirrored name's tags are listed under it, not the name stored as).
  const name = validateName(nameText);
  const repository = requestedRepositoryFor(request, name, { edge: false });
  const unknown = () => new RegistryError("NAME_UNKNOWN", undefined, { name });
  // Listed first: a repository with tags exists (its catalog entry is written before any
  // link, and never removed), so only an empty page, or a failure, asks the catalog, which
  // answers first as it always did (a name never pushed is a 404 whatever else is wrong).
  let page: { tags: string[]; next?: string };
  let n: number | undefined;
  try {
    const asked = query();
    n = asked.n;
    page = await repository.listTagsPage(n, asked.last);
  } catch (error) {
    if (!(await repository.exists())) throw unknown();
    throw error;
  }
  if (page.tags.length === 0 && !(await repository.exists())) throw unknown();
  // The answer made once, with all its headers (routes/dispatch.ts).
  const headers: Record<string, string> = { "Content-Type": "application/json" };
  if (page.next !== undefined) {
    headers.Link = nextPageLink(`/v2/${name}/tags/list`, Math.min(MAX_PAGE, n ?? MAX_PAGE), page.next);
  }
  return new Response(JSON.stringify({ name, tags: page.tags }), { headers });
}

listingRoutes.get("/:name{.+}/tags/list", (c) =>
  serveTags(routeRequestOf(c), c.req.param("name") ?? "", () => pageQuery(c)),
);
