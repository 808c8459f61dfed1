// End-to-end: OIDC federation (docs/configuration.md, "OIDC federation"). A small OIDC
// issuer on 127.0.0.1 (discovery document and JWKS, RS256 keys made with jose) is the
// only trusted one (OIDC_TRUST); the registry runs as `npm start` runs it, with no users.
// skopeo (`--dest-creds oidc:$TOKEN`) and the Docker engine (`docker login -u oidc
// --password-stdin`) push to the granted repositories with the issuer's ID tokens, are
// refused elsewhere, and a rotated key (a new kid) is picked up without a restart.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { randomBytes } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import {
  buildOciImage,
  createClients,
  expectFailure,
  fetchWithTimeout,
  haveCommand,
  makeTempDir,
  removeTempDir,
  skopeoCopy,
  startDockerd,
  startRegistry,
} from "./harness.mjs";

const AUDIENCE = "e2e-registry";
/** The registry refetches an issuer's keys for an unknown kid at most this often (src/auth/oidc.ts). */
const REFRESH_COOLDOWN_MS = 10_000;
const runId = randomBytes(4).toString("hex");
const dockerMissing = ["dockerd", "docker"].filter((command) => !haveCommand(command));

/** The issuer: its keys (the newest signs), and when its key set was last fetched. */
const issuer = { url: "", keys: [], lastKeysFetch: 0, server: null };

async function rotateKey() {
  const { privateKey, publicKey } = await generateKeyPair("RS256", { extractable: true });
  const kid = randomBytes(8).toString("hex");
  issuer.keys.push({ kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: "RS256", use: "sig" } });
}

async function idToken(claims = {}) {
  const key = issuer.keys.at(-1);
  return new SignJWT({ repository: "org/app", ref: "refs/heads/main", ...claims })
    .setProtectedHeader({ alg: "RS256", kid: key.kid, typ: "JWT" })
    .setIssuer(issuer.url)
    .setSubject("repo:org/app:ref:refs/heads/main")
    .setAudience(AUDIENCE)
    .setIssuedAt()
    .setExpirationTime("10m")
    .sign(key.privateKey);
}

async function startIssuer() {
  issuer.server = createServer((request, response) => {
    const send = (body) => {
      response.writeHead(200, { "Content-Type": "application/json" });
      response.end(JSON.stringify(body));
    };
    if (request.url === "/.well-known/openid-configuration")
      return send({ issuer: issuer.url, jwks_uri: `${issuer.url}/jwks` });
    if (request.url === "/jwks") {
      issuer.lastKeysFetch = Date.now();
      return send({ keys: issuer.keys.map((key) => key.jwk) });
    }
    response.writeHead(404);
    response.end();
  });
  await new Promise((resolve) => issuer.server.listen(0, "127.0.0.1", resolve));
  issuer.url = `http://127.0.0.1:${issuer.server.address().port}`;
  await rotateKey();
}

let registry;
let clients;
let work;
let layout;
let daemon;

describe("OIDC federation with real clients", { timeout: 180_000 }, () => {
  before(async () => {
    const missing = ["skopeo", "umoci", "unshare"].filter((command) => !haveCommand(command));
    assert.deepEqual(missing, [], `missing client tools (see .ci/run): ${missing.join(", ")}`);
    await startIssuer();
    const trust = [
      {
        issuer: issuer.url,
        audience: AUDIENCE,
        claims: { repository: "org/*", ref: "refs/heads/main" },
        repositories: ["ci/**"],
        actions: ["pull", "push"],
      },
    ];
    [registry, daemon] = await Promise.all([
      startRegistry({ env: { OIDC_TRUST: JSON.stringify(trust), TOKEN_SECRET: "e2e oidc token key" } }),
      dockerMissing.length === 0 ? startDockerd() : null,
    ]);
    clients = await createClients(registry);
    work = await makeTempDir("oidc-work");
    ({ layout } = await buildOciImage(clients, work, "layout", [64 * 1024], { tag: "v1" }));
  });

  after(async () => {
    const stops = [daemon, registry].filter(Boolean).map((server) => server.stop());
    if (clients) stops.push(clients.dispose());
    if (work) stops.push(removeTempDir(work));
    if (issuer.server) stops.push(new Promise((resolve) => issuer.server.close(resolve)));
    const failed = (await Promise.allSettled(stops)).find((outcome) => outcome.status === "rejected");
    if (failed) throw failed.reason;
  });

  it("skopeo --dest-creds oidc:$TOKEN pushes to a granted repository and is refused another", async () => {
    const token = await idToken();
    const host = registry.clientHost;
    await skopeoCopy(clients, `oci:${layout}:v1`, `docker://${host}/ci/app-${runId}:v1`, { creds: `oidc:${token}` });
    const got = await fetchWithTimeout(`${registry.url}/v2/ci/app-${runId}/manifests/v1`, {
      headers: {
        Authorization: `Basic ${Buffer.from(`oidc:${token}`).toString("base64")}`,
        Accept: "application/vnd.oci.image.manifest.v1+json",
      },
    });
    assert.equal(got.status, 200);
    await expectFailure(
      skopeoCopy(clients, `oci:${layout}:v1`, `docker://${host}/other/app-${runId}:v1`, { creds: `oidc:${token}` }),
      /denied|forbidden|unauthorized|authentication required/i,
    );
    // A token whose claims no rule matches is no login at all.
    await expectFailure(
      skopeoCopy(clients, `oci:${layout}:v1`, `docker://${host}/ci/evil-${runId}:v1`, {
        creds: `oidc:${await idToken({ ref: "refs/heads/feature" })}`,
      }),
      /unauthorized|incorrect username or password|authentication required/i,
    );
  });

  it(
    "docker login -u oidc --password-stdin, then docker push",
    { skip: dockerMissing.length > 0 && `no ${dockerMissing.join(", ")}` },
    async () => {
      const reference = `${registry.host}/ci/docker-${runId}:v1`;
      await clients.skopeo("copy", "--dest-daemon-host", daemon.host, `oci:${layout}:v1`, `docker-daemon:${reference}`);
      const configDir = join(work, "docker-config");
      await mkdir(configDir);
      const login = await daemon.docker("login", "--username", "oidc", "--password-stdin", registry.host, {
        configDir,
        input: `${await idToken()}\n`,
      });
      assert.match(login.stdout.toString("utf8"), /Login Succeeded/);
      const pushed = await daemon.docker("push", reference, { configDir });
      assert.match(pushed.stdout.toString("utf8"), /digest: sha256:[0-9a-f]{64}/);
      const denied = `${registry.host}/other/docker-${runId}:v1`;
      await daemon.docker("tag", reference, denied);
      await expectFailure(
        daemon.docker("push", denied, { configDir }),
        /denied|forbidden|unauthorized|authentication required/i,
      );
    },
  );

  it("a rotated key (a new kid) is picked up without a restart", async () => {
    // The registry refetches keys for an unknown kid at most every 10 s: wait out what is left.
    const wait = issuer.lastKeysFetch + REFRESH_COOLDOWN_MS + 200 - Date.now();
    if (wait > 0) await delay(wait);
    await rotateKey();
    const token = await idToken();
    await skopeoCopy(clients, `oci:${layout}:v1`, `docker://${registry.clientHost}/ci/app-${runId}:v2`, {
      creds: `oidc:${token}`,
    });
  });
});
