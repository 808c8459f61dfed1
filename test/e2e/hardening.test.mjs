// End-to-end: what an attacker or a careless client can send to `npm start` over real
// HTTP, with users configured. A 200 MiB token form is refused with 413 while the client
// is still sending, and neither memory nor availability suffers; Go's HTTP client (as
// containerd, crane and regclient use) receives the answers the registry gives before it
// has read a body; a keep-alive client never reuses a connection the server dropped; a
// malformed Content-Length is a 400 with an OCI error; 50 wrong passwords get 429s.
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import bcrypt from "bcryptjs";
import { haveCommand, makeTempDir, removeTempDir, ROOT, run, startRegistry } from "./harness.mjs";

const MiB = 1 << 20;
const PASSWORD = "alice-password";
const basic = `Basic ${Buffer.from(`alice:${PASSWORD}`).toString("base64")}`;

let registry;
let work;
let goClient;

/** Runs the Go client (test/e2e/go-client) and returns what it printed. */
async function goRequest(method, path, size, { length = "known", headers = {} } = {}) {
  const args = ["-length", length];
  for (const [name, value] of Object.entries(headers)) args.push("-header", `${name}: ${value}`);
  args.push(method, `${registry.url}${path}`, String(size));
  const { stdout } = await run(goClient, args, { timeoutMs: 120_000 });
  return JSON.parse(stdout.toString("utf8"));
}

/** Starts an upload as alice; its Location path. */
async function startUpload(name) {
  const response = await fetch(`${registry.url}/v2/${name}/blobs/uploads/`, {
    method: "POST",
    headers: { Authorization: basic },
  });
  assert.equal(response.status, 202);
  return response.headers.get("Location");
}

/** The raw answer to bytes written on a fresh connection (for requests no client would send). */
function rawExchange(text) {
  return new Promise((resolveExchange, rejectExchange) => {
    const socket = net.connect({ host: "127.0.0.1", port: registry.port });
    let answer = "";
    const timer = setTimeout(() => {
      socket.destroy();
      rejectExchange(new Error(`no answer in 10 s; got ${JSON.stringify(answer)}`));
    }, 10_000);
    socket.setEncoding("utf8");
    socket.on("data", (chunk) => (answer += chunk));
    socket.on("error", (error) => {
      clearTimeout(timer);
      rejectExchange(error);
    });
    socket.on("end", () => {
      clearTimeout(timer);
      resolveExchange(answer);
    });
    socket.write(text);
  });
}

describe("hostile requests over real HTTP", { timeout: 600_000 }, () => {
  before(async () => {
    assert.ok(haveCommand("go"), "missing go (golang-go; see .ci/run)");
    work = await makeTempDir("hardening");
    goClient = join(work, "go-client");
    // The Go client builds while the registry starts (kept as soon as it is up, for after()).
    await Promise.all([
      run("go", ["build", "-o", goClient, "."], {
        cwd: join(ROOT, "test", "e2e", "go-client"),
        env: { ...process.env, GOFLAGS: "-mod=mod", GOPROXY: "off", GOTOOLCHAIN: "local" },
        timeoutMs: 300_000,
      }),
      startRegistry({
        env: {
          AUTH_USERS: `alice:${bcrypt.hashSync(PASSWORD, 5)}\nbob:${bcrypt.hashSync("bob-password", 5)}`,
          TOKEN_SECRET: "e2e token key, long and random in production",
        },
      }).then((server) => (registry = server)),
    ]);
  });

  after(async () => {
    await registry?.stop();
    if (work) await removeTempDir(work);
  });

  it("a 200 MiB token form gets 413 while the client still sends; memory stays flat; the registry keeps answering", async () => {
    const before = registry.rssBytes();
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, registry.rssBytes())), 100);
    try {
      for (const length of ["known", "chunked"]) {
        const answer = await goRequest("POST", "/token", 200 * MiB, {
          length,
          headers: { "Content-Type": "application/x-www-form-urlencoded" },
        });
        assert.equal(answer.status, 413, JSON.stringify(answer));
        assert.equal(JSON.parse(answer.body).errors[0].code, "SIZE_INVALID");
        assert.equal(answer.closed, true, "the connection is closed after an answer given mid-body");
      }
    } finally {
      clearInterval(sampler);
    }
    // Before the cap, 50 MiB took workerd from 0.3 to 1.3 GB, and 200 MiB killed it.
    assert.ok(peak - before < 128 * MiB, `memory grew by ${((peak - before) / MiB).toFixed(0)} MiB`);
    const alive = await fetch(`${registry.url}/v2/`);
    assert.equal(alive.status, 401);
    const token = await fetch(`${registry.url}/token?service=${registry.host}`, { headers: { Authorization: basic } });
    assert.equal(token.status, 200);
  });

  it("Go's client receives the answers given before a body is read: 413, 404 and 416", async () => {
    const auth = { Authorization: basic };
    const manifest = { ...auth, "Content-Type": "application/vnd.oci.image.manifest.v1+json" };
    for (const length of ["known", "chunked"]) {
      const tooLarge = await goRequest("PUT", "/v2/team/app/manifests/latest", 64 * MiB, { length, headers: manifest });
      assert.equal(tooLarge.status, 413, JSON.stringify(tooLarge));
      const unknown = await goRequest(
        "PATCH",
        "/v2/team/app/blobs/uploads/00000000-0000-4000-8000-000000000000",
        100 * MiB,
        {
          length,
          headers: auth,
        },
      );
      assert.equal(unknown.status, 404, JSON.stringify(unknown));
      assert.equal(JSON.parse(unknown.body).errors[0].code, "BLOB_UPLOAD_UNKNOWN");
    }
    const location = await startUpload("team/app");
    const outOfOrder = await goRequest("PATCH", location, 64 * MiB, {
      headers: { ...auth, "Content-Range": `${MiB}-${MiB + 64 * MiB - 1}`, "Content-Type": "application/octet-stream" },
    });
    assert.equal(outOfOrder.status, 416, JSON.stringify(outOfOrder));
    assert.equal(JSON.parse(outOfOrder.body).errors[0].code, "RANGE_INVALID");
  });

  it("a keep-alive client is told Connection: close after an early answer, and never meets a dropped connection", async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const location = await startUpload("team/keepalive");
    const request = (method, path, headers = {}, body = null) =>
      new Promise((resolveRequest, rejectRequest) => {
        const outgoing = http.request(
          {
            host: "127.0.0.1",
            port: registry.port,
            method,
            path,
            agent,
            headers: { Authorization: basic, ...headers },
          },
          (response) => {
            const chunks = [];
            response.on("data", (chunk) => chunks.push(chunk));
            response.on("end", () =>
              resolveRequest({
                status: response.statusCode,
                connection: response.headers.connection,
                body: Buffer.concat(chunks),
              }),
            );
          },
        );
        outgoing.on("error", rejectRequest);
        outgoing.end(body ?? undefined);
      });
    try {
      const body = Buffer.alloc(32 * MiB, 0x61);
      const early = await request("PATCH", location, { "Content-Range": `100-${100 + body.length - 1}` }, body);
      assert.equal(early.status, 416);
      assert.equal(early.connection, "close");
      for (let index = 0; index < 20; index++) {
        const next = await request("GET", "/v2/");
        assert.equal(next.status, 200);
      }
    } finally {
      agent.destroy();
    }
  });

  it("a negative or non-numeric Content-Length is a 400 with an OCI error, not a 500 or a reset", async () => {
    for (const length of ["-5", "abc", "1e3"]) {
      const answer = await rawExchange(
        `PUT /v2/team/app/manifests/latest HTTP/1.1\r\nHost: ${registry.host}\r\nContent-Length: ${length}\r\n\r\n`,
      );
      assert.match(answer, /^HTTP\/1\.1 400 /, answer);
      const body = JSON.parse(answer.slice(answer.indexOf("\r\n\r\n") + 4));
      assert.equal(body.errors[0].code, "SIZE_INVALID");
    }
  });

  it("50 wrong passwords get 401 five times, then 429 with Retry-After; skopeo login says so", async () => {
    const wrong = `Basic ${Buffer.from("bob:guess").toString("base64")}`;
    const statuses = [];
    for (let attempt = 0; attempt < 50; attempt++) {
      const response = await fetch(`${registry.url}/token?service=${registry.host}`, {
        headers: { Authorization: wrong },
      });
      statuses.push(response.status);
      if (response.status === 429) assert.ok(Number(response.headers.get("Retry-After")) >= 1);
      await response.arrayBuffer();
    }
    assert.deepEqual(statuses.slice(0, 5), [401, 401, 401, 401, 401]);
    assert.deepEqual(new Set(statuses.slice(5)), new Set([429]));
    const login = await run(
      "skopeo",
      ["login", "--tls-verify=false", "--username", "bob", "--password", "bob-password", registry.host],
      { check: false, env: { ...process.env, REGISTRY_AUTH_FILE: join(work, "auth.json") } },
    );
    assert.notEqual(login.code, 0);
    assert.match(login.stderr, /429|too many/i);
  });
});
