// End-to-end: optional redirects of large blobs to presigned R2 URLs. With
// BLOB_REDIRECT_MIN_BYTES and R2's S3 API settings, a GET of a large blob is answered,
// after authorization and the link check, with 307 to a presigned URL; the URL's SigV4
// signature (signed by aws4fetch) is checked against an independent implementation,
// botocore (Debian's python3-botocore), recomputed from the same credentials and time.
// Small blobs and HEAD requests are answered as usual. (There is no R2 here to follow
// the redirect to; on Cloudflare the URL is R2's own.)
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { createHash, randomBytes } from "node:crypto";
import bcrypt from "bcryptjs";
import { haveCommand, run, startRegistry } from "./harness.mjs";

const MiB = 1 << 20;
const SETTINGS = {
  BLOB_REDIRECT_MIN_BYTES: String(MiB),
  BLOB_REDIRECT_TTL_SECONDS: "600",
  R2_ENDPOINT: "https://0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com",
  R2_BUCKET_NAME: "edge-registry-blobs",
  R2_ACCESS_KEY_ID: "e2eaccesskeyid0123456789",
  R2_SECRET_ACCESS_KEY: "e2e-secret-access-key-0123456789abcdef0123456789abcdef",
};
const basic = `Basic ${Buffer.from("pusher:pusher-password").toString("base64")}`;
/** Debian's python3, which python3-botocore installs into (a pyenv python3 may come first on PATH). */
const PYTHON = "/usr/bin/python3";

/** botocore's presigned URL for the same request at the same time: the independent signature. */
const BOTOCORE_PRESIGN = `
import datetime, sys, unittest.mock
from urllib.parse import urlsplit, parse_qs
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
url, key, secret = sys.argv[1:4]
parts = urlsplit(url)
query = parse_qs(parts.query)
when = datetime.datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
auth = S3SigV4QueryAuth(Credentials(key, secret), "s3", "auto", expires=int(query["X-Amz-Expires"][0]))
request = AWSRequest(method="GET", url=f"{parts.scheme}://{parts.netloc}{parts.path}")
with unittest.mock.patch("botocore.auth.datetime") as clock:
    clock.datetime.utcnow.return_value = when
    auth.add_auth(request)
print(request.url)
`;

let registry;

async function pushBlob(bytes) {
  const digest = `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
  const response = await fetch(`${registry.url}/v2/big/app/blobs/uploads/?digest=${digest}`, {
    method: "POST",
    headers: { Authorization: basic },
    body: bytes,
  });
  assert.equal(response.status, 201, await response.text());
  return digest;
}

describe("redirects of large blobs to presigned R2 URLs", { timeout: 300_000 }, () => {
  before(async () => {
    const probe = await run(PYTHON, ["-c", "import botocore"], { check: false });
    assert.equal(probe.code, 0, "python3-botocore is missing (see .ci/run)");
    assert.ok(haveCommand("python3"));
    registry = await startRegistry({
      env: {
        ...SETTINGS,
        AUTH_USERS: `pusher:${bcrypt.hashSync("pusher-password", 5)}`,
        TOKEN_SECRET: "e2e token key, long and random in production",
      },
    });
  });
  after(async () => {
    await registry?.stop();
  });

  it("a large blob's GET is a 307 to a presigned URL that botocore signs the same; small ones and HEAD are served", async () => {
    const big = await pushBlob(randomBytes(2 * MiB));
    const small = await pushBlob(randomBytes(64 * 1024));

    // Authorization first: no credentials, no URL.
    const anonymous = await fetch(`${registry.url}/v2/big/app/blobs/${big}`, { redirect: "manual" });
    assert.equal(anonymous.status, 401);
    assert.equal(anonymous.headers.get("location"), null);

    const answer = await fetch(`${registry.url}/v2/big/app/blobs/${big}`, {
      headers: { Authorization: basic },
      redirect: "manual",
    });
    assert.equal(answer.status, 307);
    const location = new URL(answer.headers.get("location"));
    assert.equal(location.origin, SETTINGS.R2_ENDPOINT);
    assert.match(location.pathname, /^\/edge-registry-blobs\/data\/[0-9a-f-]{36}$/);
    const query = location.searchParams;
    assert.equal(query.get("X-Amz-Algorithm"), "AWS4-HMAC-SHA256");
    assert.equal(query.get("X-Amz-Expires"), "600");
    assert.match(
      query.get("X-Amz-Credential"),
      new RegExp(`^${SETTINGS.R2_ACCESS_KEY_ID}/\\d{8}/auto/s3/aws4_request$`),
    );
    assert.equal(query.get("X-Amz-SignedHeaders"), "host");

    const { stdout } = await run(PYTHON, [
      "-c",
      BOTOCORE_PRESIGN,
      location.toString(),
      SETTINGS.R2_ACCESS_KEY_ID,
      SETTINGS.R2_SECRET_ACCESS_KEY,
    ]);
    const botocore = new URL(stdout.toString("utf8").trim());
    assert.equal(botocore.pathname, location.pathname);
    for (const name of ["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders"]) {
      assert.equal(botocore.searchParams.get(name), query.get(name), name);
    }
    assert.equal(query.get("X-Amz-Signature"), botocore.searchParams.get("X-Amz-Signature"));

    const head = await fetch(`${registry.url}/v2/big/app/blobs/${big}`, {
      method: "HEAD",
      headers: { Authorization: basic },
    });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get("content-length"), String(2 * MiB));
    const served = await fetch(`${registry.url}/v2/big/app/blobs/${small}`, {
      headers: { Authorization: basic },
      redirect: "manual",
    });
    assert.equal(served.status, 200);
    assert.equal((await served.arrayBuffer()).byteLength, 64 * 1024);
  });
});
