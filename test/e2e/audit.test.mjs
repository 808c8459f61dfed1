// End-to-end: the audit log (docs/operations.md, "Audit log"). The registry runs as `npm
// start` runs it, with users and an admin token; real clients push (skopeo), delete a tag
// (plain HTTP) and a manifest (skopeo delete), and log in with a wrong and a right
// password (skopeo login); `npm run audit -- --url … --json`, spawned as an operator would
// run it, lists all of it newest first with the actor and the client's address, filtered
// by repository and by actor; the repository's web page shows its activity.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import bcrypt from "bcryptjs";
import {
  buildOciImage,
  createClients,
  expectFailure,
  fetchWithTimeout,
  haveCommand,
  makeTempDir,
  removeTempDir,
  ROOT,
  run,
  startRegistry,
} from "./harness.mjs";

const users = { pusher: "pusher-password", watcher: "watcher-password" };
const ADMIN_TOKEN = "e2e admin token, long and random in production";
const REPOSITORY = "public/audited";

let registry;
let clients;
let work;
let layout;

function basic(user) {
  return `Basic ${Buffer.from(`${user}:${users[user]}`).toString("base64")}`;
}

/** `npm run -s audit -- --url <registry> --json …`, as an operator runs it: the rows it printed. */
async function auditCli(...args) {
  const { stdout } = await run("npm", ["run", "-s", "audit", "--", "--url", registry.url, "--json", ...args], {
    cwd: ROOT,
    env: { ...process.env, ADMIN_TOKEN },
    timeoutMs: 60_000,
    context: () => registry.logTail(),
  });
  const lines = stdout
    .toString("utf8")
    .split("\n")
    .filter((line) => line.trim() !== "");
  return lines.map((line) => JSON.parse(line));
}

describe("the audit log with real clients", { timeout: 300_000 }, () => {
  before(async () => {
    const missing = ["skopeo", "umoci", "unshare"].filter((command) => !haveCommand(command));
    assert.deepEqual(missing, [], `missing client tools (see .ci/run): ${missing.join(", ")}`);
    registry = await startRegistry({
      env: {
        AUTH_USERS: Object.entries(users)
          .map(([name, password]) => `${name}:${bcrypt.hashSync(password, 5)}`)
          .join("\n"),
        AUTH_ACCESS: JSON.stringify([
          { repositories: ["**"], users: ["pusher"], actions: ["pull", "push", "delete"] },
          { repositories: ["**"], users: ["watcher"], actions: ["pull"] },
          { repositories: ["public/**"], anonymous: true, actions: ["pull"] },
        ]),
        TOKEN_SECRET: "e2e token key, long and random in production",
        ADMIN_TOKEN,
      },
    });
    clients = await createClients(registry);
    work = await makeTempDir("audit-work");
    ({ layout } = await buildOciImage(clients, work, "layout", [256 * 1024], { tag: "v1" }));
  });

  after(async () => {
    await registry?.stop();
    if (clients) await clients.dispose();
    if (work) await removeTempDir(work);
  });

  it("records a push, a tag delete, a manifest delete and the logins; npm run audit lists them newest first", async () => {
    const host = registry.clientHost;
    const tls = ["--src-tls-verify=false", "--dest-tls-verify=false", "--retry-times", "0"];
    const creds = ["--dest-creds", `pusher:${users.pusher}`];
    for (const tag of ["v1", "v2", "keep"]) {
      await clients.skopeo("copy", ...tls, ...creds, `oci:${layout}:v1`, `docker://${host}/${REPOSITORY}:${tag}`);
    }
    const deleted = await fetchWithTimeout(`${registry.url}/v2/${REPOSITORY}/manifests/v2`, {
      method: "DELETE",
      headers: { Authorization: basic("pusher"), "User-Agent": "e2e-audit/1.0" },
    });
    assert.equal(deleted.status, 202);
    // A second image, so deleting its manifest leaves the repository with "keep".
    await clients.umoci("config", "--image", `${layout}:v1`, "--tag", "other", "--config.user", "nobody");
    await clients.skopeo("copy", ...tls, ...creds, `oci:${layout}:other`, `docker://${host}/${REPOSITORY}:other`);
    await clients.skopeo(
      "delete",
      "--tls-verify=false",
      "--creds",
      `pusher:${users.pusher}`,
      `docker://${host}/${REPOSITORY}:other`,
    );
    await expectFailure(
      clients.skopeo("login", "--tls-verify=false", "-u", "watcher", "-p", "wrong", host),
      /invalid username\/password|unauthorized/i,
    );
    await clients.skopeo("login", "--tls-verify=false", "-u", "watcher", "-p", users.watcher, host);

    const rows = await auditCli("--limit", "500");
    for (let index = 1; index < rows.length; index++) {
      assert.ok(rows[index - 1].time >= rows[index].time, `newest first: row ${index}`);
    }
    const find = (predicate, what) => {
      const found = rows.find(predicate);
      assert.ok(found, `${what} in ${JSON.stringify(rows.map((row) => `${row.action} ${row.actor.name}`))}`);
      return found;
    };
    const loginFailure = find((row) => row.action === "login.failure" && row.actor.name === "watcher", "failed login");
    const loginSuccess = find((row) => row.action === "login.success" && row.actor.name === "watcher", "login");
    const manifestDelete = find((row) => row.action === "manifest.delete", "manifest delete");
    const tagDelete = find((row) => row.action === "tag.delete", "tag delete");
    const pushes = rows.filter((row) => row.action === "manifest.put" && row.repository === REPOSITORY);
    const blobs = rows.filter((row) => row.action === "blob.commit" && row.repository === REPOSITORY);
    assert.deepEqual(pushes.map((row) => row.tags).reverse(), [["v1"], ["v2"], ["keep"], ["other"]]);
    assert.ok(blobs.length >= 2, "the push's blobs (config and layer)");
    assert.deepEqual(tagDelete.tags, ["v2"]);
    assert.deepEqual(manifestDelete.tags, ["other"]);
    assert.equal(tagDelete.userAgent, "e2e-audit/1.0");
    for (const row of [...pushes, ...blobs, tagDelete, manifestDelete, loginSuccess, loginFailure]) {
      assert.equal(row.address, "127.0.0.1", `${row.action}: the client's address`);
      assert.equal(row.actor.kind, "user");
    }
    for (const row of [...pushes, ...blobs, tagDelete, manifestDelete]) assert.equal(row.actor.name, "pusher");
    assert.match(loginFailure.userAgent ?? "", /skopeo|containers/i);
    // In the order they were made.
    const order = [pushes.at(-1), tagDelete, manifestDelete, loginFailure, loginSuccess].map((row) =>
      rows.indexOf(row),
    );
    assert.deepEqual(
      order,
      [...order].sort((a, b) => b - a),
    );

    const repositoryRows = await auditCli("--repository", REPOSITORY);
    assert.ok(repositoryRows.length >= 7);
    assert.ok(repositoryRows.every((row) => row.repository === REPOSITORY));
    const watcherRows = await auditCli("--actor", "watcher");
    assert.ok(watcherRows.length >= 2);
    assert.ok(watcherRows.every((row) => row.actor.name === "watcher" && row.action.startsWith("login.")));
    const limited = await auditCli("--repository", REPOSITORY, "--limit", "3");
    assert.deepEqual(limited, repositoryRows.slice(0, 3));

    // The repository's page, as anyone who may pull it sees it.
    const page = await fetchWithTimeout(`${registry.url}/repositories/${REPOSITORY}`);
    assert.equal(page.status, 200);
    const html = page.body.toString("utf8");
    const activity = html.slice(html.indexOf("Recent activity"));
    for (const action of ["manifest.delete", "tag.delete", "manifest.put"]) {
      assert.ok(activity.includes(`data-action="${action}"`), `the page lists ${action}`);
    }
    assert.match(activity, />pusher<\/td>/);
  });
});
