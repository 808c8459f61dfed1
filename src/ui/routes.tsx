/** @jsxImportSource hono/jsx */
import { Hono, type Context } from "hono";
import { recentActivity } from "../audit/audit";
import { digestOrNull, parseDigest } from "../oci/digest";
import { RegistryError } from "../oci/errors";
import { validateName, validateTag } from "../oci/names";
import { readAtMost } from "../registry/bounded";
import { catalogOf } from "../registry/registry";
import { plainContext } from "../registry/changes";
import { changeContextOf, repositoryOf, type AppEnv } from "../routes/http";
import { catalogPage, complete, IMAGE_TAG_PAGES, IMAGE_TAGS_SHOWN, imageDetails, tagPulls } from "./data";
import {
  CatalogPage,
  COPY_SCRIPT,
  STYLE,
  ConfirmDeletePage,
  LoginPage,
  MessagePage,
  repositoryPath,
  RepositoryPage,
  type Chrome,
} from "./pages";
import { ImagePage } from "./image-page";
import { checkForm, logIn, logOut, may, mayDelete, viewerActor, viewerOf, type Viewer } from "./session";
import { deliveriesOf, DeliveriesPage } from "./deliveries";
import { revokeFor, robotsFor, RobotsPage } from "./tokens";
import { quotasOfRepository, RepositoryQuotas, usageFor, UsagePage } from "./usage";
import { clientAddressOf } from "../auth/client-address";

/**
 * The web pages at `/` (docs/operations.md, "Web pages"): the catalog, a repository's
 * tags, an image, login, and deleting a tag or a manifest behind a confirmation. The
 * `/v2` API is untouched; the pages read the same storage and apply the same rules.
 */
export const uiRoutes = new Hono<AppEnv>();

type UiContext = Context<AppEnv>;

/** Largest form body read (a login, a delete: well under 1 KiB). */
const FORM_MAX_BYTES = 16 * 1024;

/** A posted form (URL-encoded, as the pages send it), read within FORM_MAX_BYTES; anything else is a 400. */
async function readForm(c: UiContext): Promise<URLSearchParams> {
  const type = (c.req.header("Content-Type") ?? "").split(";")[0]?.trim().toLowerCase();
  if (type !== "application/x-www-form-urlencoded") {
    throw new RegistryError("UNSUPPORTED", "send the page's form", undefined, {}, 400);
  }
  const body = c.req.raw.body;
  const tooLarge = () => new RegistryError("SIZE_INVALID", "the form is too large", undefined, {}, 413);
  const bytes = body ? await readAtMost(body, FORM_MAX_BYTES, tooLarge) : new Uint8Array(0);
  return new URLSearchParams(new TextDecoder().decode(bytes));
}

/** Tags per repository page. */
const TAGS_PER_PAGE = 100;
/** Repositories per catalog page. */
const REPOSITORIES_PER_PAGE = 100;
/** Audit rows a repository page shows (one D1 query). */
const ACTIVITY_SHOWN = 20;

function chrome(viewer: Viewer, title: string): Chrome {
  return { title: `${title} · edge-registry`, user: viewer.user, canLogIn: viewer.canLogIn, csrf: viewer.csrf };
}

function host(c: UiContext): string {
  return new URL(c.req.url).host;
}

let policy: Promise<string> | null = null;

/**
 * Only the pages' own style and script may run (by their hashes), nothing may frame them,
 * and forms post to this origin only: a name or label that got past escaping would still
 * not run.
 */
function contentSecurityPolicy(): Promise<string> {
  policy ??= (async () => {
    const hash = async (text: string) =>
      `'sha256-${btoa(String.fromCharCode(...new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)))))}'`;
    return [
      "default-src 'none'",
      `style-src ${await hash(STYLE)}`,
      `script-src ${await hash(COPY_SCRIPT)}`,
      "form-action 'self'",
      "frame-ancestors 'none'",
      "base-uri 'none'",
    ].join("; ");
  })();
  return policy;
}

/** Pages answer in HTML, errors included; nothing is cached (what a page shows depends on who asks). */
async function render(c: UiContext, work: (viewer: Viewer) => Promise<Response>): Promise<Response> {
  c.header("Cache-Control", "no-store");
  c.header("X-Frame-Options", "DENY");
  c.header("Content-Security-Policy", await contentSecurityPolicy());
  const viewer = await viewerOf(c);
  try {
    return await work(viewer);
  } catch (error) {
    if (!(error instanceof RegistryError)) throw error;
    const status = error.status === 401 || error.status === 404 ? 404 : error.status;
    // Retry-After of a login lockout, and the like.
    for (const [header, value] of Object.entries(error.headers)) c.header(header, value);
    return c.html(
      <MessagePage
        chrome={chrome(viewer, "Error")}
        heading={status === 404 ? "Not found" : "Refused"}
        message={error.message}
      />,
      status as 404,
    );
  }
}

/** A repository the viewer may pull, by name; anything else is the same "not found" (existence is not revealed). */
function visibleRepository(c: UiContext, viewer: Viewer) {
  const name = (() => {
    try {
      return validateName(c.req.param("name") ?? "");
    } catch {
      throw new RegistryError("NAME_UNKNOWN", "no such repository, or you may not see it");
    }
  })();
  if (!may(viewer, name, "pull")) throw new RegistryError("NAME_UNKNOWN", "no such repository, or you may not see it");
  // Changes made from the pages are the viewer's.
  const context = plainContext(changeContextOf(c), viewerActor(viewer));
  return { name, repository: repositoryOf(c, name).as(context) };
}

uiRoutes.get("/", (c) =>
  render(c, async (viewer) => {
    const filter = (c.req.query("q") ?? "").trim().slice(0, 255);
    const last = c.req.query("last");
    const page = await catalogPage(catalogOf(c.env), {
      filter,
      ...(last ? { last } : {}),
      limit: REPOSITORIES_PER_PAGE,
      visible: (name) => may(viewer, name, "pull"),
    });
    return c.html(
      <CatalogPage
        chrome={chrome(viewer, "Repositories")}
        names={page.names}
        filter={filter}
        next={page.next}
        exhausted={page.exhausted === true}
      />,
    );
  }),
);

// Webhook deliveries, for administrators (src/ui/deliveries.tsx).
uiRoutes.get("/deliveries", (c) =>
  render(c, async (viewer) => {
    const { status, records } = await deliveriesOf(c.env, viewer, c.req.query("status"));
    return c.html(<DeliveriesPage chrome={chrome(viewer, "Deliveries")} status={status} records={records} />);
  }),
);

// Storage quotas (src/ui/usage.tsx): each namespace's usage, limit and repositories.
uiRoutes.get("/usage", (c) =>
  render(c, async (viewer) => {
    const namespaces = await usageFor(c.env, viewer);
    return c.html(<UsagePage chrome={chrome(viewer, "Storage quotas")} namespaces={namespaces} />);
  }),
);

// Robot tokens, for administrators (src/ui/tokens.tsx): listed, and revoked by a form.
uiRoutes.get("/robots", (c) =>
  render(c, async (viewer) => {
    const robots = await robotsFor(c.env, viewer);
    return c.html(<RobotsPage chrome={chrome(viewer, "Robot tokens")} robots={robots} />);
  }),
);

uiRoutes.post("/robots/revoke", (c) =>
  render(c, async (viewer) => {
    const form = await readForm(c);
    checkForm(c, viewer, form);
    await revokeFor(c.env, viewer, String(form.get("name") ?? ""), {
      address: clientAddressOf(c.req.raw, c.env),
      userAgent: c.req.header("User-Agent"),
      requestId: c.req.header("CF-Ray"),
    });
    return c.redirect("/robots", 303);
  }),
);

uiRoutes.get("/login", (c) =>
  render(c, async (viewer) => {
    if (!viewer.canLogIn) throw new RegistryError("UNSUPPORTED", "this registry has no users to log in as");
    return c.html(<LoginPage chrome={chrome(viewer, "Log in")} failed={false} user="" />);
  }),
);

uiRoutes.post("/login", (c) =>
  render(c, async (viewer) => {
    if (!viewer.canLogIn) throw new RegistryError("UNSUPPORTED", "this registry has no users to log in as");
    const form = await readForm(c);
    checkForm(c, viewer, form);
    const user = String(form.get("username") ?? "").slice(0, 200);
    const password = String(form.get("password") ?? "").slice(0, 1000);
    if (await logIn(c, user, password)) return c.redirect("/", 303);
    return c.html(<LoginPage chrome={chrome(viewer, "Log in")} failed={true} user={user} />, 401);
  }),
);

uiRoutes.post("/logout", (c) =>
  render(c, async (viewer) => {
    checkForm(c, viewer, await readForm(c));
    await logOut(c, viewer);
    return c.redirect("/", 303);
  }),
);

uiRoutes.get("/repositories/:name{.+}/-/manifests/:digest", (c) =>
  render(c, async (viewer) => {
    const { name, repository } = visibleRepository(c, viewer);
    const digest = digestOrNull(c.req.param("digest"));
    if (!digest) throw new RegistryError("MANIFEST_UNKNOWN", "no such manifest");
    const image = await imageDetails(
      repository,
      digest,
      await repository.tagsNaming(digest.value, IMAGE_TAGS_SHOWN, IMAGE_TAG_PAGES),
    );
    return c.html(
      <ImagePage
        chrome={chrome(viewer, `${name}@${digest.value.slice(0, 19)}`)}
        name={name}
        host={host(c)}
        image={image}
        canDelete={mayDelete(c, viewer, name)}
      />,
    );
  }),
);

/** What a delete form names: a tag or a manifest digest. */
function deletion(values: {
  tag?: string | undefined;
  digest?: string | undefined;
}): { tag: string } | { digest: string } {
  if (values.tag) return { tag: validateTag(values.tag) };
  const digest = digestOrNull(values.digest ?? "");
  if (!digest) throw new RegistryError("MANIFEST_UNKNOWN", "name a tag or a manifest digest to delete");
  return { digest: digest.value };
}

function checkDelete(c: UiContext, viewer: Viewer, name: string): void {
  if (!mayDelete(c, viewer, name)) {
    throw new RegistryError(
      "DENIED",
      viewer.user === null ? "log in to delete" : "you may not delete from this repository",
    );
  }
}

uiRoutes.get("/repositories/:name{.+}/-/delete", (c) =>
  render(c, async (viewer) => {
    const { name } = visibleRepository(c, viewer);
    checkDelete(c, viewer, name);
    const what = deletion({ tag: c.req.query("tag"), digest: c.req.query("digest") });
    return c.html(<ConfirmDeletePage chrome={chrome(viewer, "Delete")} name={name} what={what} />);
  }),
);

uiRoutes.post("/repositories/:name{.+}/-/delete", (c) =>
  render(c, async (viewer) => {
    const { name, repository } = visibleRepository(c, viewer);
    checkDelete(c, viewer, name);
    const form = await readForm(c);
    checkForm(c, viewer, form);
    const what = deletion({ tag: form.get("tag")?.toString(), digest: form.get("digest")?.toString() });
    await repository.deleteManifest("tag" in what ? what : { digest: parseDigest(what.digest) });
    return c.redirect(repositoryPath(name), 303);
  }),
);

uiRoutes.get("/repositories/:name{.+}", (c) =>
  render(c, async (viewer) => {
    const { name, repository } = visibleRepository(c, viewer);
    const [exists, { rows, truncated }, activity, quotas] = await Promise.all([
      repository.exists(),
      repository.listTagSummaries(),
      recentActivity(c.env, name, ACTIVITY_SHOWN),
      quotasOfRepository(c.env, name),
    ]);
    if (!exists) throw new RegistryError("NAME_UNKNOWN", "no such repository, or you may not see it");
    const pages = Math.max(1, Math.ceil(rows.length / TAGS_PER_PAGE));
    const requested = Number(c.req.query("page") ?? "1");
    const page = Number.isSafeInteger(requested) ? Math.min(Math.max(1, requested), pages) : 1;
    const shown = rows.slice((page - 1) * TAGS_PER_PAGE, page * TAGS_PER_PAGE);
    await complete(repository, shown);
    const pulls = await tagPulls(c.env, name, shown);
    return c.html(
      <RepositoryPage
        chrome={chrome(viewer, name)}
        name={name}
        host={host(c)}
        rows={shown}
        page={page}
        pages={pages}
        total={rows.length}
        canDelete={mayDelete(c, viewer, name)}
        truncated={truncated}
        activity={activity}
        pulls={pulls}
        quota={<RepositoryQuotas name={name} quotas={quotas} />}
      />,
    );
  }),
);
