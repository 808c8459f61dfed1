// The local HTTP front (scripts/lib/front.mjs) on its own, before a stand-in upstream that
// behaves as workerd does where it matters: it closes kept-alive connections after a
// short idle time, and it reads framed requests off one connection in a row. Fast: no
// registry is started.
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { after, before, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { startFront } from "../../scripts/lib/front.mjs";

const IDLE_MS = 150;

/** An upstream that answers every request with its own head, and closes connections idle for IDLE_MS. */
function startUpstream() {
  const heads = [];
  const server = net.createServer((socket) => {
    let buffer = "";
    let timer = setTimeout(() => socket.end(), IDLE_MS);
    socket.on("data", (data) => {
      buffer += data.toString("latin1");
      for (;;) {
        const end = buffer.indexOf("\r\n\r\n");
        if (end < 0) break;
        const head = buffer.slice(0, end);
        buffer = buffer.slice(end + 4);
        const chunked = /\r\ntransfer-encoding: chunked/i.test(head);
        const length = Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1] ?? 0);
        if (chunked) {
          const last = buffer.indexOf("0\r\n\r\n");
          if (last < 0) {
            buffer = `${head}\r\n\r\n${buffer}`;
            break;
          }
          buffer = buffer.slice(last + 5);
        } else {
          if (buffer.length < length) {
            buffer = `${head}\r\n\r\n${buffer}`;
            break;
          }
          buffer = buffer.slice(length);
        }
        heads.push(head);
        clearTimeout(timer);
        const body = JSON.stringify({ head });
        socket.write(
          `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
        );
        timer = setTimeout(() => socket.end(), IDLE_MS);
      }
    });
    socket.on("error", () => undefined);
  });
  return new Promise((resolveListen) =>
    server.listen(0, "127.0.0.1", () =>
      resolveListen({ port: server.address().port, heads, close: () => server.close() }),
    ),
  );
}

/** One request on a connection of its own; `chunked` sends the body in two writes, without a length. */
function request(port, { method = "GET", path = "/", headers = {}, body, chunked = false } = {}) {
  return new Promise((resolveRequest, rejectRequest) => {
    const outgoing = http.request({ host: "127.0.0.1", port, method, path, headers, agent: false }, (response) => {
      const chunks = [];
      response.on("data", (chunk) => chunks.push(chunk));
      response.on("end", () =>
        resolveRequest({
          status: response.statusCode,
          headers: response.headers,
          body: Buffer.concat(chunks).toString(),
        }),
      );
    });
    outgoing.on("error", rejectRequest);
    if (chunked && body) {
      outgoing.write(body.subarray(0, body.length / 2));
      outgoing.end(body.subarray(body.length / 2));
    } else {
      outgoing.end(body);
    }
  });
}

describe("the local HTTP front", { timeout: 60_000 }, () => {
  let upstream;
  let front;
  before(async () => {
    upstream = await startUpstream();
    front = await startFront({ targetPort: upstream.port, bodyLimit: 1024 * 1024 });
  });
  after(async () => {
    await front?.close();
    upstream?.close();
  });

  it("a connection the upstream closed while idle is never answered with a 502: the request is retried", async () => {
    const statuses = [];
    for (let round = 0; round < 60; round++) {
      statuses.push((await request(front.port)).status);
      await delay(IDLE_MS + (round % 5) - 2);
    }
    assert.deepEqual(new Set(statuses), new Set([200]));
  });

  it("a chunked body on a DELETE stays framed: its bytes never read as a second request", async () => {
    const smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    const socket = net.connect(front.port, "127.0.0.1");
    socket.on("error", () => undefined);
    socket.write("DELETE /v2/x/manifests/latest HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    socket.write(`${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`);
    await delay(300);
    socket.destroy();
    assert.ok(upstream.heads.some((head) => head.startsWith("DELETE /v2/x/manifests/latest")));
    assert.ok(!upstream.heads.some((head) => head.startsWith("GET /smuggled")), upstream.heads.join("\n---\n"));
  });

  it("CF-Connecting-IP is the client's address, whatever the client says", async () => {
    const answer = await request(front.port, { headers: { "CF-Connecting-IP": "203.0.113.9" } });
    const head = JSON.parse(answer.body).head;
    assert.match(head, /\r\nCF-Connecting-IP: 127\.0\.0\.1/i);
    assert.doesNotMatch(head, /203\.0\.113\.9/);
  });

  it("a body over the limit gets an HTML 413 before the upstream sees it, declared or chunked", async () => {
    const before = upstream.heads.length;
    const declared = await request(front.port, {
      method: "PUT",
      headers: { "Content-Length": String(2 * 1024 * 1024) },
      body: Buffer.alloc(2 * 1024 * 1024),
    });
    assert.equal(declared.status, 413);
    assert.match(declared.headers["content-type"], /text\/html/);
    const chunked = await request(front.port, { method: "PATCH", body: Buffer.alloc(2 * 1024 * 1024), chunked: true });
    assert.equal(chunked.status, 413);
    assert.equal(upstream.heads.length, before);
    assert.equal((await request(front.port)).status, 200);
  });
});
