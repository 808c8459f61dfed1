// The local HTTP front (scripts/lib/front.mjs) on its own, before a stand-in upstream that
// behaves as workerd does where it matters: it closes kept-alive connections after a
// short idle time, and it reads framed requests off one connection in a row. Fast: no
// registry is started; the slow-client limits are injected at 1 s.
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { after, before, describe, it } from "node:test";
import { Readable } from "node:stream";
import { setTimeout as delay } from "node:timers/promises";
import { FRONT_SECRET_HEADER, startFront } from "../../scripts/lib/front.mjs";

// workerd's is 5 s; what the retry test aims at is the moment of the close, a few ms wide
// whatever the idle time, so a short one lets its 60 rounds take 3 s instead of 9.
const IDLE_MS = 50;

/**
 * An upstream that answers every request with its own head, and closes connections idle
 * (no bytes) for `idleMs` once they served a request. A new one waits for its first request
 * a second at least: what the front must survive is a kept-alive connection closing, and
 * everything here shares one event loop, which a loaded machine can stall for 50 ms.
 */
function startUpstream(idleMs = IDLE_MS) {
  const heads = [];
  const server = net.createServer((socket) => {
    let buffer = "";
    let timer = setTimeout(() => socket.end(), Math.max(idleMs, 1000));
    socket.on("data", (data) => {
      // A body still arriving keeps the connection (as in workerd): only silence ends it.
      clearTimeout(timer);
      timer = setTimeout(() => socket.end(), idleMs);
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
        timer = setTimeout(() => socket.end(), idleMs);
      }
    });
    socket.on("error", () => undefined);
    socket.on("close", () => clearTimeout(timer));
  });
  return new Promise((resolveListen) =>
    server.listen(0, "127.0.0.1", () =>
      resolveListen({ port: server.address().port, heads, close: () => server.close() }),
    ),
  );
}

/**
 * One request on a connection of its own; `chunked` sends the body in two writes, without a
 * length; `localAddress` picks the client's loopback address (127.0.0.2, …).
 */
function request(port, { method = "GET", path = "/", headers = {}, body, chunked = false, localAddress } = {}) {
  return new Promise((resolveRequest, rejectRequest) => {
    const options = { host: "127.0.0.1", port, method, path, headers, agent: false, localAddress, timeout: 10_000 };
    const outgoing = http.request(options, (response) => {
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
    outgoing.on("timeout", () => outgoing.destroy(new Error("no answer in 10 s")));
    if (chunked && body) {
      outgoing.write(body.subarray(0, body.length / 2));
      outgoing.end(body.subarray(body.length / 2));
    } else {
      outgoing.end(body);
    }
  });
}

/**
 * A raw connection that writes `text` (a string, or an array written `pauseMs` apart) and
 * records when it was opened and closed. `closed` resolves the ms it stayed open.
 */
function rawConnection(port, text, { localAddress, pauseMs = 100 } = {}) {
  const socket = net.connect({ port, host: "127.0.0.1", localAddress });
  const opened = performance.now();
  let received = "";
  socket.on("data", (data) => (received += data.toString("latin1")));
  socket.on("error", () => undefined);
  const closed = new Promise((resolveClose) => socket.once("close", () => resolveClose(performance.now() - opened)));
  const pieces = Array.isArray(text) ? text : [text];
  (async () => {
    for (const [index, piece] of pieces.entries()) {
      if (socket.destroyed) return;
      socket.write(piece);
      if (index < pieces.length - 1) await delay(pauseMs);
    }
  })();
  return { socket, closed, received: () => received };
}

/** How long each connection stayed open (ms), or null for those still open after `deadlineMs`. */
async function closeTimes(connections, deadlineMs) {
  const timeout = delay(deadlineMs).then(() => null);
  const times = await Promise.all(connections.map((connection) => Promise.race([connection.closed, timeout])));
  for (const connection of connections) connection.socket.destroy();
  return times;
}

describe("the local HTTP front", { timeout: 60_000 }, () => {
  let upstream;
  let front;
  before(async () => {
    upstream = await startUpstream();
    front = await startFront({ targetPort: upstream.port, bodyLimit: 1024 * 1024, frontSecret: "the front's secret" });
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

  it("the front's secret goes with every request to the Worker, and a client's copy is dropped", async () => {
    const answer = await request(front.port, { headers: { [FRONT_SECRET_HEADER]: "a forged one" } });
    const head = JSON.parse(answer.body).head;
    const sent = head.split("\r\n").filter((line) => line.toLowerCase().startsWith(FRONT_SECRET_HEADER.toLowerCase()));
    assert.deepEqual(sent, [`${FRONT_SECRET_HEADER}: the front's secret`]);
  });

  it("an absolute-form or asterisk-form target gets a 400 with an OCI error, and never reaches the Worker", async () => {
    const before = upstream.heads.length;
    for (const target of ["http://example.com/v2/", "*"]) {
      const connection = rawConnection(front.port, `OPTIONS ${target} HTTP/1.1\r\nHost: example.com\r\n\r\n`);
      await closeTimes([connection], 5000);
      const [head, body] = connection.received().split("\r\n\r\n");
      assert.match(head, /^HTTP\/1\.1 400 /, target);
      assert.equal(JSON.parse(body).errors[0].code, "UNSUPPORTED");
    }
    assert.equal(upstream.heads.length, before);
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

describe("the local HTTP front with slow clients", { timeout: 60_000 }, () => {
  const LIMITS = { headerTimeoutMs: 1000, bodyIdleTimeoutMs: 1000, maxConnectionsPerAddress: 60 };
  let upstream;
  let front;
  before(async () => {
    // A patient upstream: what closes connections here must be the front's limits.
    upstream = await startUpstream(30_000);
    front = await startFront({ targetPort: upstream.port, limits: LIMITS });
  });
  after(async () => {
    await front?.close();
    upstream?.close();
  });

  it("50 connections sending one byte each are closed after the header timeout; a request beside them is answered", async () => {
    const slow = Array.from({ length: 50 }, () => rawConnection(front.port, "G"));
    await delay(200);
    const started = performance.now();
    assert.equal((await request(front.port)).status, 200);
    assert.ok(performance.now() - started < 500, "answered at once");
    const times = await closeTimes(slow, 5000);
    assert.equal(times.filter((ms) => ms === null).length, 0, "every slow connection was closed");
    assert.ok(Math.min(...times) >= 900, `none before the timeout (${Math.min(...times)} ms)`);
    assert.ok(Math.max(...times) <= 2500, `all soon after it (${Math.max(...times)} ms)`);
    assert.ok(front.limits().headerTimeouts >= 50);
  });

  it("a request head trickled a byte at a time is cut at the header timeout, not kept alive by its bytes", async () => {
    const head = "GET /v2/ HTTP/1.1\r\nHost: a\r\nX-Padding: ".split("").concat(Array(40).fill("a"));
    const [open] = await closeTimes([rawConnection(front.port, head, { pauseMs: 100 })], 6000);
    assert.ok(open !== null && open >= 900 && open <= 2500, `closed after ${open} ms`);
  });

  it("connections over the per-address cap are closed at once; other addresses are still served", async () => {
    const held = Array.from({ length: 70 }, () => rawConnection(front.port, "G", { localAddress: "127.0.0.3" }));
    await delay(500);
    const early = await closeTimes(held, 1);
    // closeTimes destroyed them all: count those the front had closed before that.
    assert.equal(early.filter((ms) => ms !== null).length, 10, "the 10 over the cap were closed at once");
    assert.ok(front.limits().refused >= 10);
    await delay(100);
    const full = Array.from({ length: 60 }, () => rawConnection(front.port, "G", { localAddress: "127.0.0.3" }));
    await delay(300);
    assert.equal((await request(front.port, { localAddress: "127.0.0.4" })).status, 200);
    await assert.rejects(request(front.port, { localAddress: "127.0.0.3" }), "the capped address is refused");
    await closeTimes(full, 5000);
    assert.equal((await request(front.port, { localAddress: "127.0.0.3" })).status, 200, "served once they closed");
  });

  it("a body that stops arriving is cut after the body idle timeout; one that keeps moving is not", async () => {
    const stalled = rawConnection(front.port, "PUT /v2/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789");
    const [open] = await closeTimes([stalled], 6000);
    assert.ok(open !== null && open >= 900 && open <= 2500, `closed after ${open} ms`);
    assert.equal(front.limits().bodyTimeouts, 1);
    // 12 bytes 300 ms apart: 3.3 s in all, never 1 s without a byte.
    const moving = Readable.from(
      (async function* () {
        for (let index = 0; index < 12; index++) {
          yield Buffer.from("x");
          await delay(300);
        }
      })(),
    );
    const answer = await new Promise((resolveAnswer, rejectAnswer) => {
      const outgoing = http.request(
        {
          host: "127.0.0.1",
          port: front.port,
          method: "PUT",
          path: "/v2/y",
          headers: { "Content-Length": "12" },
          agent: false,
        },
        (response) => {
          response.resume();
          response.on("end", () => resolveAnswer(response.statusCode));
        },
      );
      outgoing.on("error", rejectAnswer);
      moving.pipe(outgoing);
    });
    assert.equal(answer, 200);
  });
});
