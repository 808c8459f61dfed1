// The push relay: a local HTTP proxy in front of a deployed registry that re-cuts upload
// bodies into chunks under the plan's request-body limit (README, "Pushing large images
// to a deployed registry").
//
// Cloudflare refuses request bodies over the plan's limit (100 MB on Free and Pro) before
// the Worker runs, and docker, podman, buildah, skopeo and containerd send each layer as
// one PATCH or PUT. Clients push to the relay on 127.0.0.1 unchanged; the relay forwards
// every request, and an upload body longer than the chunk size (or of unknown length) is
// sent on as `Content-Range` PATCHes of at most that size, then committed the way the
// client asked (its PATCH answered with the last 202, its PUT or POST `?digest=` with the
// registry's 201).
//
// - Streamed: each chunk is spooled to a temporary file (at most two chunks per upload
//   exist at once: one being sent, the next being read from the client), never a whole
//   layer in memory or on disk. The spool is what makes a chunk retryable: a chunk that
//   fails transiently (a network error, 5xx, 429) is retried after asking the registry
//   for the upload's offset (GET of the upload), from there.
// - The chunk size is the smaller of --chunk and the registry's advertised
//   `OCI-Chunk-Max-Length`, rounded down to a multiple of its `OCI-Chunk-Min-Length` (the
//   registry's part size: chunks of whole parts never leave a tail to stage).
// - Authentication passes through: the 401 challenge with its absolute token realm (the
//   client fetches tokens from the registry itself), Bearer and Basic headers. `Location`
//   headers naming the registry are rewritten to name the relay.
// - Pulls and everything else pass through, streamed.
import { createReadStream, createWriteStream } from "node:fs";
import { mkdtemp, rm, stat } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { listenRefusingTls } from "./front.mjs";
import { formatBytes } from "./sizes.mjs";

/** 95 MB: under the 100 MB request-body limit of the Free and Pro plans, with room for headers. */
export const DEFAULT_CHUNK_BYTES = 95_000_000;
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "expect",
  "host",
]);
/** Headers the relay sets itself on the chunk requests it makes. */
const BODY_HEADERS = new Set(["content-length", "content-range", "content-type"]);
const CHUNK_ATTEMPTS = 6;
/** A registry that has not answered a request in this long is given up on (and retried, for chunks). */
const UPSTREAM_TIMEOUT_MS = 300_000;
const UPLOAD_PATH = /^\/v2\/(.+)\/blobs\/uploads\/?([^/?]*)(\?.*)?$/;

class RelayError extends Error {
  constructor(status, code, message, answer) {
    super(message);
    this.status = status;
    this.code = code;
    /** The registry's own answer to pass on ({ status, headers, body }), when there is one. */
    this.answer = answer;
  }
}

function ociError(code, message) {
  return JSON.stringify({ errors: [{ code, message }] });
}

/**
 * Starts a relay to the registry at `to` (an http(s) URL), listening on `listen`
 * (host:port). `chunk`: the largest body sent upstream, in bytes. `log`: where progress
 * and errors go (stderr by default); `quiet` keeps progress out of it.
 * Returns { url, port, close() }.
 */
export async function startRelay({
  to,
  listen = "127.0.0.1:5001",
  chunk = DEFAULT_CHUNK_BYTES,
  quiet = false,
  log = (line) => process.stderr.write(`${line}\n`),
}) {
  const target = new URL(to);
  if (target.protocol !== "http:" && target.protocol !== "https:") throw new Error(`--to must be http(s): ${to}`);
  const transport = target.protocol === "https:" ? https : http;
  const agent = new transport.Agent({ keepAlive: true, maxSockets: 64 });
  const [host, portText] = listen.includes(":") ? listen.split(/:(?=[^:]*$)/) : ["127.0.0.1", listen];
  /** What the registry told us about chunks (POST answers). */
  const advertised = { min: 0, max: Infinity };
  let relayOrigin = "";

  const chunkBytes = () => {
    let size = Math.min(chunk, advertised.max);
    if (advertised.min > 0 && size >= advertised.min) size -= size % advertised.min;
    return size;
  };

  function learn(headers) {
    const min = Number(headers["oci-chunk-min-length"]);
    const max = Number(headers["oci-chunk-max-length"]);
    if (Number.isSafeInteger(min) && min > 0) advertised.min = min;
    if (Number.isSafeInteger(max) && max > 0) advertised.max = max;
  }

  /** A client's headers as the registry should see them (no hop-by-hop, no Host; Authorization kept). */
  function forwardedHeaders(request, { dropBody = false } = {}) {
    const headers = {};
    for (let index = 0; index < request.rawHeaders.length; index += 2) {
      const name = request.rawHeaders[index];
      const lower = name.toLowerCase();
      if (HOP_BY_HOP.has(lower) || (dropBody && BODY_HEADERS.has(lower))) continue;
      headers[name] = request.rawHeaders[index + 1];
    }
    return headers;
  }

  /** The registry's answer headers as the client should see them: Location names the relay. */
  function answerHeaders(headers) {
    const result = {};
    for (const [name, value] of Object.entries(headers)) {
      if (HOP_BY_HOP.has(name)) continue;
      if (name === "location" && typeof value === "string" && value.startsWith(target.origin)) {
        result[name] = relayOrigin + value.slice(target.origin.length);
      } else {
        result[name] = value;
      }
    }
    return result;
  }

  /** One request to the registry; resolves its answer ({ status, headers, body: Buffer }) or the streaming answer. */
  function upstream(method, path, headers, body, { stream = false } = {}) {
    return new Promise((resolveAnswer, rejectAnswer) => {
      const outgoing = transport.request({
        protocol: target.protocol,
        hostname: target.hostname,
        port: target.port || undefined,
        method,
        path,
        headers,
        agent,
      });
      outgoing.setTimeout(UPSTREAM_TIMEOUT_MS, () =>
        outgoing.destroy(new Error(`no answer in ${UPSTREAM_TIMEOUT_MS / 1000} s`)),
      );
      outgoing.on("error", rejectAnswer);
      outgoing.on("response", (answer) => {
        if (stream) {
          resolveAnswer(answer);
          return;
        }
        const chunks = [];
        answer.on("data", (data) => chunks.push(data));
        answer.on("error", rejectAnswer);
        answer.on("end", () =>
          resolveAnswer({ status: answer.statusCode, headers: answer.headers, body: Buffer.concat(chunks) }),
        );
      });
      if (body === undefined || body === null) outgoing.end();
      else if (Buffer.isBuffer(body) || typeof body === "string") outgoing.end(body);
      else {
        body.on("error", (error) => outgoing.destroy(error));
        body.pipe(outgoing);
      }
    });
  }

  function unreachable(error) {
    const message = `the relay cannot reach the registry at ${target.origin}: ${error.code ?? error.message}`;
    log(`relay: ${message}`);
    return new RelayError(502, "UNAVAILABLE", message);
  }

  function reply(response, status, headers, body) {
    if (response.headersSent) {
      response.destroy();
      return;
    }
    response.writeHead(status, headers);
    response.end(body);
  }

  function replyError(response, error) {
    if (error instanceof RelayError && error.answer) {
      reply(response, error.answer.status, answerHeaders(error.answer.headers), error.answer.body);
      return;
    }
    const status = error instanceof RelayError ? error.status : 502;
    const code = error instanceof RelayError ? error.code : "UNAVAILABLE";
    const body = ociError(code, error.message);
    reply(response, status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) }, body);
  }

  /** Everything but large upload bodies: forwarded as it is, both ways, streamed. */
  function passThrough(request, response) {
    const headers = forwardedHeaders(request);
    if (request.headers["transfer-encoding"] !== undefined) headers["Transfer-Encoding"] = "chunked";
    const hasBody =
      request.headers["transfer-encoding"] !== undefined || Number(request.headers["content-length"] ?? 0) > 0;
    upstream(request.method, request.url, headers, hasBody ? request : undefined, { stream: true }).then(
      (answer) => {
        if (request.method === "POST") learn(answer.headers);
        response.writeHead(answer.statusCode ?? 502, answerHeaders(answer.headers));
        answer.pipe(response);
        answer.on("aborted", () => response.destroy());
      },
      (error) => {
        request.resume();
        replyError(response, unreachable(error));
      },
    );
  }

  /** The upload's offset as the registry has it (GET of the upload: `Range: 0-<last>`). */
  async function offsetOf(location, headers) {
    const answer = await upstream("GET", location, headers).catch((error) => {
      throw unreachable(error);
    });
    if (answer.status !== 204 && answer.status !== 202 && answer.status !== 200) {
      throw new RelayError(answer.status, "BLOB_UPLOAD_UNKNOWN", "the registry does not know the upload", answer);
    }
    const range = /^(?:bytes=)?0-(\d+)$/.exec(answer.headers.range ?? "");
    // `0-0` is what registries (distribution, this one) answer for an empty upload too;
    // read as empty: an upload of exactly one byte so far does not occur mid-push.
    const last = range ? Number(range[1]) : 0;
    return last === 0 ? 0 : last + 1;
  }

  /** Path and query of a Location the registry gave (absolute or relative). */
  function pathOf(location) {
    const url = new URL(location, target.origin);
    return `${url.pathname}${url.search}`;
  }

  /**
   * Sends the client's body on in chunks from `offset` on: each chunk spooled, then
   * PATCHed with Content-Range, retried from the registry's offset when it fails
   * transiently. Returns the last answer's Location and the registry's offset at the end.
   */
  async function sendInChunks(request, location, offset, headers, progress) {
    const size = chunkBytes();
    const spoolDir = await mkdtemp(join(tmpdir(), "edge-registry-relay-"));
    const source = new ByteSource(request);
    try {
      let nextFile = 0;
      const fill = async () => {
        const file = join(spoolDir, `chunk-${nextFile++ % 2}`);
        const length = await source.take(size, file);
        return { file, length };
      };
      let pending = fill();
      let last = null;
      for (;;) {
        const current = await pending;
        if (current.length === 0) break;
        pending = current.length < size ? Promise.resolve({ length: 0 }) : fill();
        // Keep the next read going while this chunk is sent; surface its failure later.
        pending.catch(() => undefined);
        last = await sendChunk(current, location, offset, headers);
        location = last.location;
        offset += current.length;
        progress.sent(current.length);
      }
      return { location, offset, answer: last?.answer ?? null };
    } finally {
      await rm(spoolDir, { recursive: true, force: true });
    }
  }

  async function sendChunk({ file, length }, location, start, headers) {
    let skip = 0;
    for (let attempt = 1; ; attempt++) {
      let failure;
      try {
        const answer = await upstream(
          "PATCH",
          location,
          {
            ...headers,
            "Content-Type": "application/octet-stream",
            "Content-Length": String(length - skip),
            "Content-Range": `${start + skip}-${start + length - 1}`,
          },
          createReadStream(file, { start: skip, highWaterMark: 1024 * 1024 }),
        );
        if (answer.status === 202 || answer.status === 204) {
          return { location: pathOf(answer.headers.location ?? location), answer };
        }
        if (answer.status === 413) {
          const message =
            `the registry refused a ${formatBytes(length - skip)} chunk as too large (413): ` +
            "lower --chunk (the plan's request-body limit, or the registry's MAX_CHUNK_LENGTH)";
          log(`relay: ${message}`);
          throw new RelayError(413, "SIZE_INVALID", message);
        }
        if (answer.status < 500 && answer.status !== 429) {
          throw new RelayError(
            answer.status,
            "BLOB_UPLOAD_INVALID",
            `the registry refused a chunk (${answer.status})`,
            answer,
          );
        }
        failure = new Error(`HTTP ${answer.status}`);
      } catch (error) {
        if (error instanceof RelayError) throw error;
        failure = error;
      }
      if (attempt >= CHUNK_ATTEMPTS) throw unreachable(failure);
      log(`relay: a chunk failed (${failure.message}); asking the registry where to resume (attempt ${attempt + 1})`);
      await delay(Math.min(8000, 250 * 2 ** attempt));
      let registryOffset;
      try {
        registryOffset = await offsetOf(location, headers);
      } catch (error) {
        if (error instanceof RelayError && error.status !== 502) throw error;
        continue;
      }
      if (registryOffset === start + length) return { location, answer: null };
      if (registryOffset < start || registryOffset > start + length) {
        throw new RelayError(
          409,
          "BLOB_UPLOAD_INVALID",
          `the upload's offset moved to ${registryOffset}, outside the chunk ${start}-${start + length - 1}`,
        );
      }
      skip = registryOffset - start;
    }
  }

  /** An upload body over the chunk size (or of unknown length): re-cut, then committed as the client asked. */
  async function recut(request, response, match) {
    const name = match[1];
    const url = new URL(request.url, "http://relay");
    const headers = forwardedHeaders(request, { dropBody: true });
    const digest = url.searchParams.get("digest");
    let location;
    let offset;
    if (request.method === "POST") {
      // A monolithic upload: start a session, send the chunks, commit.
      url.searchParams.delete("digest");
      const started = await upstream("POST", `${url.pathname}${url.search}`, {
        ...headers,
        "Content-Length": "0",
      }).catch((error) => {
        throw unreachable(error);
      });
      if (started.status !== 202) {
        throw new RelayError(started.status, "BLOB_UPLOAD_INVALID", "the registry did not start an upload", started);
      }
      learn(started.headers);
      location = pathOf(started.headers.location);
      offset = 0;
    } else {
      url.searchParams.delete("digest");
      location = `${url.pathname}${url.search}`;
      const range = /^(?:bytes[ =])?(\d+)-\d+/.exec(request.headers["content-range"] ?? "");
      offset = range ? Number(range[1]) : await offsetOf(location, headers);
    }
    const progress = new Progress(name, digest ?? match[2], quiet, log);
    const sent = await sendInChunks(request, location, offset, headers, progress);
    progress.done();
    if (request.method === "PATCH") {
      const answered = sent.answer ?? (await upstream("GET", sent.location, headers));
      const answerStatus = answered.status === 204 ? 202 : answered.status;
      reply(response, answerStatus, { ...answerHeaders(answered.headers), "content-length": "0" });
      return;
    }
    const commit = new URL(sent.location, target.origin);
    commit.searchParams.set("digest", digest ?? "");
    const committed = await upstream("PUT", `${commit.pathname}${commit.search}`, {
      ...headers,
      "Content-Length": "0",
    }).catch((error) => {
      throw unreachable(error);
    });
    reply(response, committed.status, answerHeaders(committed.headers), committed.body);
  }

  const server = http.createServer({ requestTimeout: 0, headersTimeout: 60_000, maxHeaderSize: 64 * 1024 });
  server.on("request", (request, response) => {
    const match = UPLOAD_PATH.exec(request.url ?? "");
    const length = request.headers["content-length"];
    const unknownLength = request.headers["transfer-encoding"] !== undefined;
    const large = unknownLength || (length !== undefined && Number(length) > chunkBytes());
    const carriesLayer = ["PATCH", "PUT", "POST"].includes(request.method) && large;
    const committing = request.method !== "PATCH" && new URL(request.url, "http://relay").searchParams.has("digest");
    if (match && carriesLayer && (request.method === "PATCH" || committing)) {
      recut(request, response, match).catch((error) => {
        request.resume();
        if (!(error instanceof RelayError)) log(`relay: ${error.stack ?? error.message}`);
        replyError(response, error);
      });
      return;
    }
    passThrough(request, response);
  });
  server.on("clientError", (_error, socket) => socket.destroy());
  const listener = await listenRefusingTls(server, { port: Number(portText), host });
  relayOrigin = `http://${host.includes(":") ? `[${host}]` : host}:${listener.port}`;
  return {
    url: relayOrigin,
    port: listener.port,
    close: async () => {
      agent.destroy();
      await listener.close();
    },
  };
}

/** Reads a stream a given number of bytes at a time into files (carrying over what a read brought beyond). */
class ByteSource {
  constructor(stream) {
    this.iterator = stream[Symbol.asyncIterator]();
    this.leftover = null;
    this.ended = false;
  }

  /** Writes up to `max` bytes into `file`; resolves how many (0: the stream had ended). */
  async take(max, file) {
    const out = createWriteStream(file, { highWaterMark: 1024 * 1024 });
    const finished = new Promise((resolveFinish, rejectFinish) => {
      out.once("finish", resolveFinish);
      out.once("error", rejectFinish);
    });
    let taken = 0;
    try {
      while (taken < max) {
        let piece = this.leftover;
        this.leftover = null;
        if (!piece) {
          if (this.ended) break;
          const next = await this.iterator.next();
          if (next.done) {
            this.ended = true;
            break;
          }
          piece = next.value;
        }
        if (piece.length > max - taken) {
          this.leftover = piece.subarray(max - taken);
          piece = piece.subarray(0, max - taken);
        }
        taken += piece.length;
        if (!out.write(piece)) await new Promise((resolveDrain) => out.once("drain", resolveDrain));
      }
    } finally {
      out.end();
    }
    await finished;
    if ((await stat(file)).size !== taken) throw new Error("the spool file is not what was read");
    return taken;
  }
}

/** Progress of one upload on stderr: bytes sent and MB/s, a line per chunk and one at the end. */
class Progress {
  constructor(name, label, quiet, log) {
    this.name = name;
    this.label = label.length > 19 ? `${label.slice(0, 19)}…` : label;
    this.quiet = quiet;
    this.log = log;
    this.bytes = 0;
    this.chunks = 0;
    this.started = performance.now();
  }

  rate() {
    const seconds = (performance.now() - this.started) / 1000;
    return seconds > 0 ? `${(this.bytes / 1e6 / seconds).toFixed(1)} MB/s` : "";
  }

  sent(bytes) {
    this.bytes += bytes;
    this.chunks++;
    if (!this.quiet) {
      this.log(
        `relay: ${this.name} ${this.label}: ${formatBytes(this.bytes)} sent in ${this.chunks} chunks, ${this.rate()}`,
      );
    }
  }

  done() {
    if (this.quiet) return;
    const seconds = ((performance.now() - this.started) / 1000).toFixed(1);
    this.log(`relay: ${this.name} ${this.label}: done, ${formatBytes(this.bytes)} in ${seconds} s (${this.rate()})`);
  }
}
