// End-to-end: the web pages (src/ui) in a real browser (Debian's chromium, driven by
// playwright-core), against one registry started as `npm start` runs it with users and
// access rules: `admin` may push, pull and delete everywhere; anonymous visitors may pull
// `public/**` only. skopeo pushes an image whose config carries a hostile label, a
// two-platform index, and a private image; an OCI 1.1 artifact whose subject is the
// image is pushed by hand. test/unit/ui.test.ts checks the same pages in workerd.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import bcrypt from "bcryptjs";
import {
  buildLabelledImage,
  CHROMIUM,
  createClients,
  descriptorFor,
  fetchWithTimeout,
  haveCommand,
  launchChromium,
  makeTempDir,
  removeTempDir,
  sha256,
  skopeoCopy as copyWithSkopeo,
  startRegistry,
  writeBlob,
} from "./harness.mjs";

const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
const REF_NAME = "org.opencontainers.image.ref.name";
const ARTIFACT_TYPE = "application/vnd.example.signature.v1";
const HOSTILE_LABEL = "<script>window.__pwned = 1</script>";

/** Bounded waits for everything the browser does. */
const PAGE_TIMEOUT_MS = 10_000;

const ADMIN = { user: "admin", password: "admin-password for the e2e web pages" };
const ADMIN_BASIC = `Basic ${Buffer.from(`${ADMIN.user}:${ADMIN.password}`).toString("base64")}`;

let registry;
let clients;
let work;
let browser;
/** What was pushed: { app: {descriptor, size (config + layers)}, multi: {layout, descriptor, children}, artifact: {digest, size} }. */
const pushed = {};

/** formatBytes of src/ui/pages.tsx, as the size cell shows a size. */
function formatBytes(size) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = size;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${size} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

/** skopeo copy over plain HTTP, byte for byte, no retries (harness.mjs); `creds` for the destination. */
function skopeoCopy(source, destination, { all = false, creds } = {}) {
  return copyWithSkopeo(clients, source, destination, { all, creds, timeoutMs: 60_000 });
}

/** Pushes a layout's `tag` as `name:tag` with admin's credentials. */
function push(layout, tag, name, { all = false, as = tag } = {}) {
  return skopeoCopy(`oci:${layout}:${tag}`, `docker://${registry.clientHost}/${name}:${as}`, {
    all,
    creds: `${ADMIN.user}:${ADMIN.password}`,
  });
}

/** Tags `descriptor` as `tag` in a layout's index.json. */
async function addRef(layout, tag, descriptor) {
  const index = JSON.parse(await readFile(join(layout, "index.json"), "utf8"));
  index.manifests = index.manifests.filter((entry) => entry.annotations?.[REF_NAME] !== tag);
  index.manifests.push({ ...descriptor, annotations: { [REF_NAME]: tag } });
  await writeFile(join(layout, "index.json"), JSON.stringify(index));
}

/** The API as admin (Basic credentials; the registry accepts them on /v2 as clients send them). */
async function api(path, init = {}) {
  return fetchWithTimeout(
    `${registry.url}${path}`,
    { ...init, headers: { Authorization: ADMIN_BASIC, ...init.headers } },
    15_000,
  );
}

/** An OCI 1.1 artifact (empty config, one payload layer) whose subject is `subject`, PUT by digest. */
async function pushArtifact(name, subject) {
  const blob = async (bytes) => {
    const digest = `sha256:${sha256(bytes)}`;
    const posted = await api(`/v2/${name}/blobs/uploads/?digest=${digest}`, { method: "POST", body: bytes });
    assert.equal(posted.status, 201, `blob ${digest}: ${posted.body.toString("utf8")}`);
    return { digest, size: bytes.length };
  };
  const empty = await blob(Buffer.from("{}"));
  const payload = await blob(Buffer.from(`signature for ${subject.digest}`));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType: ARTIFACT_TYPE,
      config: { mediaType: "application/vnd.oci.empty.v1+json", ...empty },
      layers: [{ mediaType: "application/octet-stream", ...payload }],
      subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
    }),
  );
  const digest = `sha256:${sha256(manifest)}`;
  const put = await api(`/v2/${name}/manifests/${digest}`, {
    method: "PUT",
    headers: { "Content-Type": OCI_MANIFEST },
    body: manifest,
  });
  assert.equal(put.status, 201, put.body.toString("utf8"));
  assert.equal(put.headers.get("oci-subject"), subject.digest);
  return { digest, size: manifest.length };
}

/** A fresh browser context (its own cookies), optionally with clipboard access to the registry. */
async function newContext({ clipboard = false } = {}) {
  const context = await browser.newContext();
  context.setDefaultTimeout(PAGE_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(PAGE_TIMEOUT_MS);
  if (clipboard) await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: registry.url });
  return context;
}

/**
 * Opens `path` in a new page of `context`. `page.scriptErrors` collects its script errors
 * and what its Content-Security-Policy refused (its own style or script, or anything else).
 */
async function open(context, path, { status = 200 } = {}) {
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  page.on("console", (message) => {
    if (message.type() === "error" && /Content Security Policy/i.test(message.text())) errors.push(message.text());
  });
  page.scriptErrors = errors;
  const response = await page.goto(`${registry.url}${path}`);
  assert.equal(response.status(), status, `GET ${path}`);
  return page;
}

/** Every text of `selector` on `page`, trimmed. */
async function texts(page, selector) {
  return (await page.locator(selector).allTextContents()).map((text) => text.trim());
}

describe("web pages in a real browser", { timeout: 120_000 }, () => {
  before(async () => {
    const missing = ["skopeo", "umoci", "unshare"].filter((command) => !haveCommand(command));
    assert.deepEqual(missing, [], `missing client tools (see .ci/run): ${missing.join(", ")}`);
    assert.ok(existsSync(CHROMIUM), `no browser at ${CHROMIUM}: install Debian's chromium package (see .ci/run)`);
    const users = `${ADMIN.user}:${bcrypt.hashSync(ADMIN.password, 4)}`;
    const access = [
      { repositories: ["**"], users: [ADMIN.user], actions: ["pull", "push", "delete"], catalog: true },
      { repositories: ["public/**"], anonymous: true, actions: ["pull"] },
    ];
    // The registry, the browser and the images at once: they do not depend on each other.
    const starting = startRegistry({
      env: {
        AUTH_USERS: users,
        AUTH_ACCESS: JSON.stringify(access),
        TOKEN_SECRET: "e2e web pages key, long and random in production",
      },
    });
    const launching = launchChromium();
    work = await makeTempDir("ui-work");
    // The image clients build with: a sandbox of its own until the registry is up.
    const builder = await createClients({ clientHost: "127.0.0.1:1", logTail: () => "" });
    const building = Promise.all([
      buildLabelledImage(builder, work, join(work, "app"), {
        tag: "v1",
        labels: { "org.example.evil": HOSTILE_LABEL, "org.example.team": "blue" },
        layerSize: 5000,
      }),
      (async () => {
        const layout = join(work, "multi");
        const amd64 = await buildLabelledImage(builder, work, layout, { tag: "amd64", arch: "amd64" });
        const arm64 = await buildLabelledImage(builder, work, layout, { tag: "arm64", arch: "arm64" });
        const children = [amd64, arm64].map(({ descriptor }, at) => ({
          mediaType: descriptor.mediaType,
          digest: descriptor.digest,
          size: descriptor.size,
          platform: { architecture: ["amd64", "arm64"][at], os: "linux" },
        }));
        const index = { schemaVersion: 2, mediaType: OCI_INDEX, manifests: children };
        const descriptor = { mediaType: OCI_INDEX, ...(await writeBlob(layout, Buffer.from(JSON.stringify(index)))) };
        await addRef(layout, "v1", descriptor);
        return { layout, descriptor, children };
      })(),
      buildLabelledImage(builder, work, join(work, "private"), { tag: "v1", layerSize: 3000 }),
    ]);
    // Stop whatever started when something else failed.
    const settled = await Promise.allSettled([starting, launching, building]);
    registry = settled[0].value;
    browser = settled[1].value;
    await builder.dispose();
    for (const outcome of settled) if (outcome.status === "rejected") throw outcome.reason;
    const [app, multi, privateImage] = settled[2].value;

    clients = await createClients(registry);
    const manifest = JSON.parse(await readFile(join(app.layout, "blobs", ...app.descriptor.digest.split(":")), "utf8"));
    pushed.app = {
      descriptor: app.descriptor,
      size: [manifest.config, ...manifest.layers].reduce((sum, blob) => sum + blob.size, 0),
    };
    pushed.multi = multi;
    // Three repositories at once; within one, in order (v2 after v1: newest first on its page).
    await Promise.all([
      (async () => {
        await push(app.layout, "v1", "public/app");
        await push(app.layout, "v1", "public/app", { as: "v2" });
        pushed.artifact = await pushArtifact("public/app", app.descriptor);
      })(),
      push(multi.layout, "v1", "public/multi", { all: true }),
      (async () => {
        await push(privateImage.layout, "v1", "private/app");
        await push(privateImage.layout, "v1", "private/app", { as: "old" });
      })(),
    ]);
  });

  after(async () => {
    await browser?.close();
    await registry?.stop();
    if (clients) await clients.dispose();
    if (work) await removeTempDir(work);
  });

  it("lists the repositories, a repository's tags with sizes, an index's platforms and an image's referrers", async () => {
    const context = await newContext();
    try {
      // The catalog, and its filter.
      const catalog = await open(context, "/");
      assert.deepEqual(await texts(catalog, "ul.repositories a"), ["public/app", "public/multi"]);
      await catalog.fill('input[name="q"]', "multi");
      await Promise.all([catalog.waitForURL(/\?q=multi$/), catalog.click('input[type="submit"][value="Filter"]')]);
      assert.deepEqual(await texts(catalog, "ul.repositories a"), ["public/multi"]);

      // A repository: its tags newest first, each with its size and a pull command.
      await catalog.click("text=public/multi");
      await catalog.waitForURL(`${registry.url}/repositories/public/multi`);
      const multiRow = catalog.locator('tr[data-tag="v1"]');
      assert.equal(await multiRow.locator(".platforms").textContent(), "linux/amd64, linux/arm64");
      const app = await open(context, "/repositories/public/app");
      assert.deepEqual(await app.locator("tr[data-tag]").evaluateAll((rows) => rows.map((row) => row.dataset.tag)), [
        "v2",
        "v1",
      ]);
      for (const tag of ["v1", "v2"]) {
        const row = app.locator(`tr[data-tag="${tag}"]`);
        assert.equal(await row.locator(".size").textContent(), formatBytes(pushed.app.size), `${tag}: size`);
        assert.equal(
          await row.locator(".pull code").textContent(),
          `docker pull ${registry.host}/public/app:${tag}`,
          `${tag}: pull command`,
        );
        // No deleting for anonymous visitors.
        assert.equal(await row.locator("a.danger").count(), 0);
      }

      // The index: both platforms, each a link to its image.
      await catalog.click('tr[data-tag="v1"] a');
      await catalog.waitForURL(
        `${registry.url}/repositories/public/multi/-/manifests/${pushed.multi.descriptor.digest}`,
      );
      const platforms = catalog.locator("table.platforms a");
      assert.deepEqual(await platforms.allTextContents(), ["linux/amd64", "linux/arm64"]);
      assert.deepEqual(
        await platforms.evaluateAll((links) => links.map((link) => link.getAttribute("href"))),
        pushed.multi.children.map((child) => `/repositories/public/multi/-/manifests/${child.digest}`),
      );
      await platforms.filter({ hasText: "linux/arm64" }).click();
      await catalog.waitForURL(
        `${registry.url}/repositories/public/multi/-/manifests/${pushed.multi.children[1].digest}`,
      );
      assert.match(await catalog.locator("table.config").textContent(), /linux\/arm64/);

      // The image: its layers, and the artifact under its artifact type, linked to its page.
      const image = await open(context, `/repositories/public/app/-/manifests/${pushed.app.descriptor.digest}`);
      assert.equal(await image.locator("h1 code").textContent(), pushed.app.descriptor.digest);
      assert.equal(await image.locator("table.layers tr").count(), 1);
      const referrers = image.locator(`section.referrers[data-artifact-type="${ARTIFACT_TYPE}"]`);
      assert.equal(await referrers.count(), 1);
      assert.equal(await image.locator("section.referrers").count(), 1);
      assert.equal(await referrers.locator("h3").textContent(), ARTIFACT_TYPE);
      await referrers.locator("a").click();
      await image.waitForURL(`${registry.url}/repositories/public/app/-/manifests/${pushed.artifact.digest}`);
      assert.match(await image.locator("p.muted").first().textContent(), /^Artifact/);
      assert.equal(
        await image.locator(`a[href="/repositories/public/app/-/manifests/${pushed.app.descriptor.digest}"]`).count(),
        1,
        "the artifact's page links its subject",
      );
      for (const page of context.pages()) assert.deepEqual(page.scriptErrors, [], page.url());
    } finally {
      await context.close();
    }
  });

  it("shows a label that is markup as text, and runs none of it", async () => {
    const context = await newContext();
    try {
      const page = await open(context, `/repositories/public/app/-/manifests/${pushed.app.descriptor.digest}`);
      assert.equal(await page.evaluate(() => typeof globalThis.__pwned), "undefined", "the label ran as a script");
      const row = page.locator("table.annotations tr", { hasText: "org.example.evil" });
      assert.equal(await row.locator("td").textContent(), HOSTILE_LABEL);
      assert.ok((await page.locator("body").innerText()).includes(HOSTILE_LABEL));
      // The page's only script is its own (the copy button's).
      assert.equal(await page.locator("script").count(), 1);
      assert.deepEqual(page.scriptErrors, []);
    } finally {
      await context.close();
    }
  });

  it("the copy button copies a pull command that pulls what was pushed", async () => {
    const context = await newContext({ clipboard: true });
    try {
      const page = await open(context, "/repositories/public/app");
      const button = page.locator('tr[data-tag="v1"] button[data-copy]');
      await button.click();
      await page.locator('tr[data-tag="v1"] button[data-copy]', { hasText: "Copied" }).waitFor();
      const copied = await page.evaluate(() => globalThis.navigator.clipboard.readText());
      assert.equal(copied, `docker pull ${registry.host}/public/app:v1`);
      const [, host, name, tag] = /^docker pull ([^/]+)\/(.+):([\w][\w.-]*)$/.exec(copied) ?? [];
      assert.equal(host, `127.0.0.1:${registry.port}`);
      // What docker pull would fetch, fetched by skopeo as an anonymous client.
      const pulled = join(work, "pulled");
      await skopeoCopy(`docker://${host}/${name}:${tag}`, `oci:${pulled}:${tag}`);
      const descriptor = await descriptorFor(pulled, tag);
      assert.equal(descriptor.digest, pushed.app.descriptor.digest);
      assert.deepEqual(page.scriptErrors, []);
    } finally {
      await context.close();
    }
  });

  it("anonymous visitors see only the public repositories", async () => {
    const context = await newContext();
    try {
      const catalog = await open(context, "/");
      const names = await texts(catalog, "ul.repositories a");
      assert.ok(names.includes("public/app") && names.includes("public/multi"), JSON.stringify(names));
      assert.ok(!names.includes("private/app"), JSON.stringify(names));
      assert.equal(await catalog.locator('header a[href="/login"]').count(), 1);
      const hidden = await open(context, "/repositories/private/app", { status: 404 });
      assert.equal(await hidden.locator("h1").textContent(), "Not found");
      assert.ok(!(await hidden.content()).includes('data-tag="v1"'));
      // Nor by guessing a delete link.
      await open(context, "/repositories/private/app/-/delete?tag=v1", { status: 404 });
      await open(context, "/repositories/public/app/-/delete?tag=v1", { status: 403 });
      for (const page of context.pages()) assert.deepEqual(page.scriptErrors, [], page.url());
    } finally {
      await context.close();
    }
  });

  it("admin logs in, deletes a tag through the Delete link and its confirmation, and logs out", async () => {
    const context = await newContext();
    try {
      const page = await open(context, "/");
      await Promise.all([page.waitForURL(`${registry.url}/login`), page.click('header a[href="/login"]')]);
      await page.fill('input[name="username"]', ADMIN.user);
      await page.fill('input[name="password"]', "not the password");
      await page.click('input[type="submit"][value="Log in"]');
      await page.locator("p.danger", { hasText: "Incorrect username or password" }).waitFor();
      // No session; only the per-browser cookie the CSRF tokens are bound to, script-proof too.
      const before = await context.cookies();
      assert.deepEqual(
        before.map((cookie) => [cookie.name, cookie.httpOnly, cookie.sameSite]),
        [["registry_csrf", true, "Strict"]],
      );

      await page.fill('input[name="password"]', ADMIN.password);
      await Promise.all([page.waitForURL(`${registry.url}/`), page.click('input[type="submit"][value="Log in"]')]);
      const cookies = await context.cookies();
      const session = cookies.find((cookie) => cookie.name === "registry_session");
      assert.ok(session, JSON.stringify(cookies));
      assert.equal(session.httpOnly, true);
      assert.equal(session.sameSite, "Strict");
      assert.equal(session.path, "/");
      // Over plain HTTP the cookie cannot be Secure (it would never be sent back).
      assert.equal(session.secure, false);
      assert.equal(await page.evaluate(() => globalThis.document.cookie), "", "the session is not readable by scripts");
      assert.match(await page.locator("header").textContent(), /admin/);
      assert.ok((await texts(page, "ul.repositories a")).includes("private/app"));

      await page.click("text=private/app");
      await page.waitForURL(`${registry.url}/repositories/private/app`);
      assert.deepEqual(
        (await page.locator("tr[data-tag]").evaluateAll((rows) => rows.map((row) => row.dataset.tag))).sort(),
        ["old", "v1"],
      );
      await page.locator('tr[data-tag="old"] a.danger', { hasText: "Delete" }).click();
      await page.waitForURL(`${registry.url}/repositories/private/app/-/delete?tag=old`);
      assert.equal(await page.locator("h1").textContent(), "Delete a tag?");
      assert.equal(await page.locator("main code").first().textContent(), "private/app:old");
      // The tag is still there until the form is sent.
      assert.deepEqual(JSON.parse((await api("/v2/private/app/tags/list")).body.toString("utf8")).tags.sort(), [
        "old",
        "v1",
      ]);
      await Promise.all([
        page.waitForURL(`${registry.url}/repositories/private/app`),
        page.click('form[action="/repositories/private/app/-/delete"] input[type="submit"][value="Delete"]'),
      ]);
      assert.deepEqual(await page.locator("tr[data-tag]").evaluateAll((rows) => rows.map((row) => row.dataset.tag)), [
        "v1",
      ]);

      const listed = await api("/v2/private/app/tags/list");
      assert.equal(listed.status, 200);
      assert.deepEqual(JSON.parse(listed.body.toString("utf8")).tags, ["v1"]);
      const gone = await api("/v2/private/app/manifests/old", { headers: { Accept: OCI_MANIFEST } });
      assert.equal(gone.status, 404);

      // Logging out ends the session: the private repository is hidden again.
      await Promise.all([
        page.waitForURL(`${registry.url}/`),
        page.click('header input[type="submit"][value="Log out"]'),
      ]);
      assert.deepEqual(
        (await context.cookies()).filter((cookie) => cookie.name === "registry_session"),
        [],
      );
      assert.ok(!(await texts(page, "ul.repositories a")).includes("private/app"));
      for (const shown of context.pages()) assert.deepEqual(shown.scriptErrors, [], shown.url());
    } finally {
      await context.close();
    }
  });
});
