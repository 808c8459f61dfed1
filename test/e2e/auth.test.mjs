// End-to-end: token authentication with real clients. The registry runs under plain
// `wrangler dev` (npm run dev), with users configured in .dev.vars: podman
// logs in, pushes and pulls; skopeo uses --creds; a read-only user is refused a push; an
// anonymous client pulls only the public repository.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import bcrypt from "bcryptjs";
import { readFile } from "node:fs/promises";
import { setTimeout as delay } from "node:timers/promises";
import {
  createClients,
  expectFailure,
  fetchWithTimeout,
  haveCommand,
  makeTempDir,
  removeTempDir,
  run,
  startContainerd,
  startRegistry,
  writeRandomFile,
} from "./harness.mjs";

const MiB = 1 << 20;

let registry;
/** The registry as `npm start` runs it with users, started beside the other (its own test). */
let local;
let clients;
let work;
let layout;

const users = {
  pusher: "pusher-password",
  reader: "reader-password",
};

const access = [
  { repositories: ["**"], users: ["pusher"], actions: ["pull", "push", "delete"], catalog: true },
  { repositories: ["**"], users: ["reader"], actions: ["pull"] },
  { repositories: ["public/**"], anonymous: true, actions: ["pull"] },
];

/** The registry's log shows `pattern` within a few seconds (it is written after the answer). */
async function expectLogged(pattern) {
  for (let attempt = 0; attempt < 50 && !pattern.test(registry.logTail(400)); attempt++) await delay(100);
  assert.match(registry.logTail(400), pattern);
}

describe("token authentication with real clients", { timeout: 600_000 }, () => {
  before(async () => {
    const missing = ["skopeo", "podman", "umoci", "unshare"].filter((command) => !haveCommand(command));
    assert.deepEqual(missing, [], `missing client tools (see .ci/run): ${missing.join(", ")}`);
    // Against plain `wrangler dev` (npm run dev): the clients suite covers npm start. Each
    // server is kept as soon as it is up, so after() stops it whatever fails next.
    await Promise.all([
      startRegistry({
        server: "wrangler-dev",
        env: {
          // Cost 5 (htpasswd -B's default): a login costs a few ms.
          AUTH_USERS: Object.entries(users)
            .map(([name, password]) => `${name}:${bcrypt.hashSync(password, 5)}`)
            .join("\n"),
          AUTH_ACCESS: JSON.stringify(access),
          TOKEN_SECRET: "e2e token key, long and random in production",
        },
      }).then((server) => (registry = server)),
      startRegistry({ env: { AUTH_USERS: `pusher:${bcrypt.hashSync(users.pusher, 5)}` } }).then(
        (server) => (local = server),
      ),
    ]);
    clients = await createClients(registry);
    work = await makeTempDir("auth-work");
    layout = join(work, "layout");
    await clients.umoci("init", "--layout", layout);
    await clients.umoci("new", "--image", `${layout}:v1`);
    const file = join(work, "layer.bin");
    await writeRandomFile(file, 3 * MiB);
    await clients.umoci("insert", "--image", `${layout}:v1`, file, "/data/layer.bin");
    await clients.umoci("gc", "--layout", layout);
  });

  after(async () => {
    await Promise.all([registry?.stop(), local?.stop()]);
    if (clients) await clients.dispose();
    if (work) await removeTempDir(work);
  });

  it("GET /v2/ challenges with the Worker's own token endpoint", async () => {
    const got = await fetchWithTimeout(`${registry.url}/v2/`);
    assert.equal(got.status, 401);
    const challenge = got.headers.get("www-authenticate") ?? "";
    assert.match(challenge, new RegExp(`^Bearer realm="http://${registry.host}/token",service="${registry.host}"`));
  });

  it("podman login, push and pull", async () => {
    const host = registry.clientHost;
    await expectFailure(
      clients.podman("login", "--tls-verify=false", "-u", "pusher", "-p", "wrong", host),
      /invalid username\/password/,
    );
    await clients.podman("login", "--tls-verify=false", "-u", "pusher", "-p", users.pusher, host);
    const imageId = (await clients.podman("pull", `oci:${layout}:v1`)).stdout.toString("utf8").trim().split("\n").pop();
    await clients.podman("push", "--tls-verify=false", imageId, `docker://${host}/team/app:v1`, {
      timeoutMs: 180_000,
    });
    await clients.podman("rmi", "--all", "--force");
    await clients.podman("pull", "--tls-verify=false", `${host}/team/app:v1`, { timeoutMs: 180_000 });
    const inspected = JSON.parse((await clients.podman("image", "inspect", `${host}/team/app:v1`)).stdout.toString());
    assert.equal(inspected[0].Id, imageId);
    await clients.podman("logout", host);
  });

  it("skopeo --creds: the pusher pushes, the reader pulls but is refused a push", async () => {
    const host = registry.clientHost;
    const tls = ["--src-tls-verify=false", "--dest-tls-verify=false", "--retry-times", "0"];
    await clients.skopeo(
      "copy",
      ...tls,
      "--dest-creds",
      `pusher:${users.pusher}`,
      `oci:${layout}:v1`,
      `docker://${host}/public/base:v1`,
    );
    await clients.skopeo(
      "copy",
      ...tls,
      "--dest-creds",
      `pusher:${users.pusher}`,
      `oci:${layout}:v1`,
      `docker://${host}/private/app:v1`,
    );
    const pulled = join(work, "pulled-by-reader");
    await clients.skopeo(
      "copy",
      ...tls,
      "--src-creds",
      `reader:${users.reader}`,
      `docker://${host}/private/app:v1`,
      `oci:${pulled}:v1`,
    );
    await expectFailure(
      clients.skopeo(
        "copy",
        ...tls,
        "--dest-creds",
        `reader:${users.reader}`,
        `oci:${layout}:v1`,
        `docker://${host}/private/other:v1`,
      ),
      /denied: requested access to the resource is denied/,
    );
  });

  it(
    "docker login keeps a refresh token; docker manifest inspect trades it for an access token",
    { skip: haveCommand("docker") ? false : "no docker CLI on this machine" },
    async () => {
      const config = join(work, "docker-config");
      const env = { ...clients.env, DOCKER_CONFIG: config };
      const host = registry.clientHost;
      await expectFailure(
        run("docker", ["login", "--username", "pusher", "--password-stdin", host], { env, input: "wrong\n" }),
        /incorrect username or password/,
      );
      await run("docker", ["login", "--username", "pusher", "--password-stdin", host], {
        env,
        input: `${users.pusher}\n`,
      });
      const saved = JSON.parse(await readFile(join(config, "config.json"), "utf8"));
      assert.ok(saved.auths[host].identitytoken, "docker saved a refresh token (offline_token=true)");
      const { stdout } = await run("docker", ["manifest", "inspect", "--insecure", `${host}/private/app:v1`], { env });
      const manifest = JSON.parse(stdout.toString("utf8"));
      assert.equal(manifest.schemaVersion, 2);
      await expectLogged(/POST \/token 200/);
    },
  );

  it(
    "containerd (ctr) pulls and pushes with credentials through POST /token; a wrong password is refused",
    { skip: haveCommand("containerd") && process.getuid?.() === 0 ? false : "needs containerd and root" },
    async () => {
      const containerd = await startContainerd();
      try {
        const host = registry.clientHost;
        const { ctr } = containerd;
        await expectFailure(
          ctr("images", "pull", "--plain-http", "--user", "reader:wrong", `${host}/private/app:v1`),
          /401 Unauthorized/,
        );
        await ctr("images", "pull", "--plain-http", "--user", `reader:${users.reader}`, `${host}/private/app:v1`);
        await ctr("images", "tag", `${host}/private/app:v1`, `${host}/team/from-containerd:v1`);
        await expectFailure(
          ctr("images", "push", "--plain-http", "--user", `reader:${users.reader}`, `${host}/team/from-containerd:v1`),
          /denied|forbidden|403/i,
        );
        await ctr(
          "images",
          "push",
          "--plain-http",
          "--user",
          `pusher:${users.pusher}`,
          `${host}/team/from-containerd:v1`,
        );
        const head = await fetchWithTimeout(`${registry.url}/v2/team/from-containerd/manifests/v1`, {
          method: "HEAD",
          headers: { Authorization: `Basic ${Buffer.from(`reader:${users.reader}`).toString("base64")}` },
        });
        assert.equal(head.status, 200);
        await expectLogged(/POST \/token 200/);
      } finally {
        await containerd.stop();
      }
    },
  );

  it("an anonymous client pulls the public repository and nothing else", async () => {
    const host = registry.clientHost;
    const tls = ["--src-tls-verify=false", "--retry-times", "0"];
    await clients.skopeo("copy", ...tls, `docker://${host}/public/base:v1`, `oci:${join(work, "anonymous-public")}:v1`);
    await expectFailure(
      clients.skopeo("copy", ...tls, `docker://${host}/private/app:v1`, `oci:${join(work, "anonymous-private")}:v1`),
      /unauthorized/,
    );
    const catalog = await fetchWithTimeout(`${registry.url}/v2/_catalog`);
    assert.equal(catalog.status, 401);
  });

  it("npm start with users enforces authentication too, and says so on start-up", async () => {
    assert.match(local.logTail(50), /authentication enforced/);
    assert.equal((await fetchWithTimeout(`${local.url}/v2/`)).status, 401);
    const basic = `Basic ${Buffer.from(`pusher:${users.pusher}`).toString("base64")}`;
    assert.equal((await fetchWithTimeout(`${local.url}/v2/`, { headers: { Authorization: basic } })).status, 200);
  });
});
