// End-to-end: robot tokens (docs/operations.md, "Robot tokens"). The registry runs as `npm
// start` runs it, with users and an admin token; `npm run token -- create … --json`,
// spawned as an operator runs it, makes a robot; skopeo pushes with the robot's name and
// secret where it is granted and is refused elsewhere; `npm run token -- revoke` makes its
// next push (and a token it already holds) fail at once; a robot created to expire in 2 s
// is refused after; `npm run token -- list` shows the last use.
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

const ADMIN_TOKEN = "e2e admin token, long and random in production";

let registry;
let clients;
let work;
let layout;

/** `npm run -s token -- <args> --url <registry>`, as an operator runs it: its stdout. */
async function tokenCli(...args) {
  const { stdout } = await run("npm", ["run", "-s", "token", "--", ...args, "--url", registry.url], {
    cwd: ROOT,
    env: { ...process.env, ADMIN_TOKEN },
    timeoutMs: 60_000,
    context: () => registry.logTail(),
  });
  return stdout.toString("utf8");
}

function push(name, secret, repository, tag) {
  return clients.skopeo(
    "copy",
    "--src-tls-verify=false",
    "--dest-tls-verify=false",
    "--retry-times",
    "0",
    "--dest-creds",
    `${name}:${secret}`,
    `oci:${layout}:v1`,
    `docker://${registry.clientHost}/${repository}:${tag}`,
  );
}

describe("robot tokens with real clients", { timeout: 120_000 }, () => {
  before(async () => {
    const missing = ["skopeo", "umoci", "unshare"].filter((command) => !haveCommand(command));
    assert.deepEqual(missing, [], `missing client tools (see .ci/run): ${missing.join(", ")}`);
    registry = await startRegistry({
      env: {
        AUTH_USERS: `alice:${bcrypt.hashSync("alice-password", 5)}`,
        TOKEN_SECRET: "e2e token key, long and random in production",
        ADMIN_TOKEN,
      },
    });
    clients = await createClients(registry);
    work = await makeTempDir("robots-work");
    ({ layout } = await buildOciImage(clients, work, "layout", [64 * 1024], { tag: "v1" }));
  });

  after(async () => {
    await registry?.stop();
    if (clients) await clients.dispose();
    if (work) await removeTempDir(work);
  });

  it("creates a robot, pushes with it where granted, lists its last use, and revokes it at once", async () => {
    const created = JSON.parse(
      await tokenCli("create", "--name", "ci-deploy", "--access", "team/**:pull,push", "--expires-in", "90d", "--json"),
    );
    assert.equal(created.name, "ci-deploy");
    assert.match(created.secret, /^ert_/);

    await push("ci-deploy", created.secret, "team/app", "v1");
    await expectFailure(push("ci-deploy", created.secret, "other/app", "v1"), /denied|unauthorized|forbidden/i);

    const listed = await tokenCli("list", "--json");
    const robot = listed
      .split("\n")
      .filter((line) => line.trim() !== "")
      .map((line) => JSON.parse(line))
      .find((entry) => entry.name === "ci-deploy");
    assert.ok(robot, listed);
    assert.deepEqual(robot.access, [{ repositories: "team/**", actions: ["pull", "push"] }]);
    assert.ok(robot.lastUsed && Date.now() - Date.parse(robot.lastUsed) < 60_000, JSON.stringify(robot));
    assert.ok(robot.expires && Date.parse(robot.expires) > Date.now() + 89 * 86400_000);
    const table = await tokenCli("list");
    assert.match(table, /NAME\s+ACCESS\s+CREATED \(UTC\)\s+EXPIRES \(UTC\)\s+LAST USED \(UTC\)/);
    assert.match(table, /ci-deploy\s+team\/\*\*:pull,push/);

    // A token the robot holds, fetched before the revocation.
    const tokenAnswer = await fetchWithTimeout(
      `${registry.url}/token?service=${encodeURIComponent(registry.clientHost)}&scope=repository:team/app:pull`,
      { headers: { Authorization: `Basic ${Buffer.from(`ci-deploy:${created.secret}`).toString("base64")}` } },
    );
    assert.equal(tokenAnswer.status, 200);
    const { token } = JSON.parse(tokenAnswer.body.toString("utf8"));

    await tokenCli("revoke", "ci-deploy");
    const revokedAt = Date.now();
    await expectFailure(push("ci-deploy", created.secret, "team/app", "v2"), /unauthorized|invalid username/i);
    const held = await fetchWithTimeout(`${registry.url}/v2/team/app/manifests/v1`, {
      method: "HEAD",
      headers: { Authorization: `Bearer ${token}` },
    });
    assert.equal(held.status, 401);
    assert.ok(Date.now() - revokedAt < 10_000);
    assert.doesNotMatch(await tokenCli("list"), /ci-deploy/);
  });

  it("refuses a robot once it has expired", async () => {
    const created = JSON.parse(
      await tokenCli(
        "create",
        "--name",
        "short-lived",
        "--access",
        "team/**:push,pull",
        "--expires-in",
        "3s",
        "--json",
      ),
    );
    await push("short-lived", created.secret, "team/short", "v1");
    const wait = Date.parse(created.expires) - Date.now();
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, wait) + 200));
    await expectFailure(push("short-lived", created.secret, "team/short", "v2"), /unauthorized|invalid username/i);
    assert.match(await tokenCli("list"), /short-lived.*\(expired\)/);
  });

  it("refuses a robot of a user's name", async () => {
    await expectFailure(
      tokenCli("create", "--name", "alice", "--access", "**:pull"),
      /409|a user \(AUTH_USERS\) has this name/,
    );
  });
});
