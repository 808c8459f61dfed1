// The push relay: a local HTTP proxy in front of a deployed registry that re-cuts upload
// bodies into chunks under the plan's request-body limit (README, "Pushing large images
// to a deployed registry"; docs/architecture.md, "The push relay").
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
//   fails (a network error, 5xx, 429, a busy or moved session) is retried from the
//   upload's offset as the registry reports it (GET of the upload).
// - The chunk size is the smaller of --chunk and the registry's advertised
//   `OCI-Chunk-Max-Length`, rounded down to a multiple of its `OCI-Chunk-Min-Length` (the
//   registry's part size: chunks of whole parts never leave a tail to stage).
// - Authentication passes through: Bearer and Basic headers as the client sends them,
//   and the 401 challenge, whose realm is rewritten to the relay when it is the
//   registry's own token endpoint: token requests then pass through the relay (to the
//   registry, unchanged), and the relay keeps in memory what the client logged in with,
//   so that when the client's short-lived token expires in the middle of a long upload
//   the relay gets a fresh one for the rest of it, as the client itself would, for
//   exactly the scopes the expired token carried (never more).
// - `Location` headers naming the registry are rewritten to name the relay.
// - Pulls and everything else pass through, streamed.
// - It listens on 127.0.0.1 unless every interface is asked for by name (parseListen),
//   and bounds what slow clients may hold as the local front does
//   (scripts/lib/connection-limits.mjs).
import { createReadStream, createWriteStream } from "node:fs";
import { mkdtemp, rm, stat } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import zlib from "node:zlib";
import { HOP_BY_HOP as FRONT_HOP_BY_HOP, listenRefusingTls } from "./front.mjs";
import { formatBytes } from "./sizes.mjs";

/** 95 MB: under the 100 MB request-body limit of the Free and Pro plans, with room for headers. */
export const DEFAULT_CHUNK_BYTES = 95_000_000;
/** What is never forwarded: the front's hop-by-hop headers, and Host (the registry's own is sent). */
const HOP_BY_HOP = new Set([...FRONT_HOP_BY_HOP, "host"]);
/** Headers the relay sets itself on the chunk requests it makes. */
const BODY_HEADERS = new Set(["content-length", "content-range", "content-type"]);
/** Attempts per step of an upload (a chunk, the offset, the commit) before the push fails. */
const ATTEMPTS = 8;
/** A registry that has not answered a request in this long is given up on (and retried, for chunks). */
const UPSTREAM_TIMEOUT_MS = 300_000;
/** How long a client that was answered mid-body is read from (and its bytes dropped) before it is cut off. */
const LINGER_MS = 30_000;
const UPLOAD_PATH = /^\/v2\/(.+)\/blobs\/uploads\/?([^/?]*)(\?.*)?$/;
/** Logins remembered for refreshing tokens (see the header comment), and for how long. */
const LOGINS_MAX = 10_000;
const LOGIN_TTL_MS = 24 * 60 * 60 * 1000;
/** The most a token answer may hold once decompressed (they are a few KiB). */
const TOKEN_ANSWER_MAX = 1024 * 1024;
/** Hosts that mean every interface: listened on only when named. */
const ALL_INTERFACES = new Set(["0.0.0.0", "::"]);
/** A Host header a client may name the relay by: a name or address, and a port. */
const HOST_HEADER = /^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;

/**
 * `--listen`'s value: `HOST:PORT`, `[IPV6]:PORT`, `:PORT` or `PORT`. Without a host the
 * relay listens on 127.0.0.1 only: it pushes with whatever credentials its clients send,
 * so being reachable from elsewhere must be asked for (`0.0.0.0:PORT`, `[::]:PORT`).
 */
export function parseListen(text) {
  const colon = text.lastIndexOf(":");
  let host = colon < 0 ? "" : text.slice(0, colon);
  const portText = colon < 0 ? text : text.slice(colon + 1);
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port > 65_535) {
    throw new Error(`--listen: expected HOST:PORT, :PORT or PORT, got ${JSON.stringify(text)}`);
  }
  if (host === "") host = "127.0.0.1";
  return { host, port, allInterfaces: ALL_INTERFACES.has(host) };
}

/** A token endpoint's answer body as JSON, whatever its Content-Encoding; null when it is not JSON. */
function tokenAnswerJson(answer) {
  const options = { maxOutputLength: TOKEN_ANSWER_MAX };
  try {
    const encoding = String(answer.headers["content-encoding"] ?? "identity")
      .trim()
      .toLowerCase();
    let body = answer.body;
    if (encoding === "gzip" || encoding === "x-gzip") body = zlib.gunzipSync(body, options);
    else if (encoding === "deflate") body = zlib.inflateSync(body, options);
    else if (encoding === "br") body = zlib.brotliDecompressSync(body, options);
    else if (encoding !== "identity" && encoding !== "") return null;
    const parsed = JSON.parse(body.toString("utf8"));
    return typeof parsed === "object" && parsed !== null ? parsed : null;
  } catch {
    return null;
  }
}

/**
 * The scopes an issued token carries, exactly: the answer's `scope` (what the registry
 * granted, space-separated), else the token's own `access` claim (its payload is read,
 * not verified: the relay got it from the registry itself). Empty when neither says.
 */
function grantedScopes(issued, token) {
  if (typeof issued.scope === "string") return issued.scope.split(" ").filter((scope) => scope !== "");
  try {
    const payload = JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString("utf8"));
    if (!Array.isArray(payload.access)) return [];
    return payload.access
      .filter(
        (grant) => typeof grant?.type === "string" && typeof grant.name === "string" && Array.isArray(grant.actions),
      )
      .map((grant) => `${grant.type}:${grant.name}:${grant.actions.join(",")}`);
  } catch {
    return [];
  }
}

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

/** Whether an answer to a step of an upload is worth retrying (from the registry's offset). */
function transient(status) {
  return status >= 500 || status === 429 || status === 409 || status === 416 || status === 408;
}

/**
 * Starts a relay to the registry at `to` (an http(s) URL), listening on `listen`
 * (parseListen: 127.0.0.1 unless another host is named). `chunk`: the largest body sent
 * upstream, in bytes. `log`: where progress and errors go (stderr by default); `quiet`
 * keeps progress out of it. `spoolDir`: where chunks are spooled (the system's temporary
 * directory by default). `limits`: what slow clients may hold
 * (scripts/lib/connection-limits.mjs).
 * Returns { url, port, host, allInterfaces, limits(), close() }.
 */
export async function startRelay({
  to,
  listen = "127.0.0.1:5001",
  chunk = DEFAULT_CHUNK_BYTES,
  quiet = false,
  spoolDir = tmpdir(),
  limits,
  log = (line) => process.stderr.write(`${line}\n`),
}) {
  const target = new URL(to);
  if (target.protocol !== "http:" && target.protocol !== "https:") throw new Error(`--to must be http(s): ${to}`);
  const transport = target.protocol === "https:" ? https : http;
  const agent = new transport.Agent({ keepAlive: true, maxSockets: 64 });
  const { host, port: listenPort, allInterfaces } = parseListen(listen);
  /** What the registry told us about chunks (POST answers). */
  const advertised = { min: 0, max: Infinity };
  /** The registry's token endpoint path when the relay passes it through (realm rewritten), else null. */
  let tokenPath = null;
  /** access token → { authorization (Basic), refreshToken, service, scopes (what the token carried), until } */
  const logins = new Map();
  /** Spool directories of uploads in flight, removed on close. */
  const spools = new Set();
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

  /**
   * The relay's origin as `request`'s client reaches it: the listening address, or, when
   * listening on all interfaces (where 0.0.0.0 names no reachable host), the Host the
   * client used.
   */
  function originOf(request) {
    const named = request?.headers.host;
    if (allInterfaces && typeof named === "string" && HOST_HEADER.test(named)) return `http://${named}`;
    return relayOrigin;
  }

  /** A challenge whose realm is the registry's own token endpoint points at the relay's (`origin`) instead. */
  function rewriteChallenge(value, origin) {
    return value.replace(/realm="([^"]*)"/, (whole, realm) => {
      let url;
      try {
        url = new URL(realm);
      } catch {
        return whole;
      }
      if (url.origin !== target.origin) return whole;
      tokenPath = url.pathname;
      return `realm="${origin}${url.pathname}${url.search}"`;
    });
  }

  /** The registry's answer headers as `request`'s client should see them: Location and realm name the relay. */
  function answerHeaders(headers, request) {
    const origin = originOf(request);
    const result = {};
    for (const [name, value] of Object.entries(headers)) {
      if (HOP_BY_HOP.has(name)) continue;
      if (name === "location" && typeof value === "string" && value.startsWith(target.origin)) {
        result[name] = origin + value.slice(target.origin.length);
      } else if (name === "www-authenticate") {
        const rewrite = (challenge) => rewriteChallenge(challenge, origin);
        result[name] = Array.isArray(value) ? value.map(rewrite) : rewrite(value);
      } else {
        result[name] = value;
      }
    }
    return result;
  }

  /**
   * One request to the registry; resolves its answer ({ status, headers, body: Buffer }) or,
   * with `stream`, the streaming answer. `body`: a Buffer, a string, or a function making
   * a fresh stream (so the request can be sent again).
   */
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
          resolveAnswer({ answer, outgoing });
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
        const source = typeof body === "function" ? body() : body;
        source.on("error", (error) => outgoing.destroy(error));
        source.pipe(outgoing);
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

  function replyError(response, error, extraHeaders = {}) {
    if (error instanceof RelayError && error.answer) {
      reply(
        response,
        error.answer.status,
        { ...answerHeaders(error.answer.headers, response.req), ...extraHeaders },
        error.answer.body,
      );
      return;
    }
    const status = error instanceof RelayError ? error.status : 502;
    const code = error instanceof RelayError ? error.code : "UNAVAILABLE";
    const body = ociError(code, error.message);
    reply(
      response,
      status,
      { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body), ...extraHeaders },
      body,
    );
  }

  // ---- logins, for tokens that expire in the middle of a long upload ----

  function remember(token, login) {
    if (typeof token !== "string" || token === "") return;
    if (logins.size >= LOGINS_MAX) logins.clear();
    logins.set(token, { ...login, until: Date.now() + LOGIN_TTL_MS });
  }

  /** A token request passed through: forwarded unchanged, what it logged in with remembered under the token it got. */
  async function passToken(request, response) {
    const chunks = [];
    for await (const piece of request) {
      chunks.push(piece);
      if (chunks.reduce((sum, part) => sum + part.length, 0) > 64 * 1024) throw new Error("token request too large");
    }
    const body = Buffer.concat(chunks);
    const headers = forwardedHeaders(request);
    const answer = await upstream(request.method, request.url, headers, body.length > 0 ? body : undefined).catch(
      (error) => {
        throw unreachable(error);
      },
    );
    if (answer.status === 200) {
      const url = new URL(request.url, "http://relay");
      const login = { service: url.searchParams.get("service") ?? "" };
      if (request.method === "GET" && /^basic /i.test(request.headers.authorization ?? "")) {
        login.authorization = request.headers.authorization;
      } else if (request.method === "POST") {
        const form = new URLSearchParams(body.toString("utf8"));
        login.service = form.get("service") ?? login.service;
        if (form.get("grant_type") === "password") {
          const basic = Buffer.from(`${form.get("username") ?? ""}:${form.get("password") ?? ""}`).toString("base64");
          login.authorization = `Basic ${basic}`;
        }
        if (form.get("grant_type") === "refresh_token") login.refreshToken = form.get("refresh_token");
      }
      // Clients that accept gzip (docker does) get the answer compressed, and passed on so.
      const issued = tokenAnswerJson(answer);
      if (issued !== null) {
        if (typeof issued.refresh_token === "string") login.refreshToken = issued.refresh_token;
        const token = issued.token ?? issued.access_token;
        // Renewed later with exactly what it carries: never more than the client had.
        login.scopes = typeof token === "string" ? grantedScopes(issued, token) : [];
        if ((login.authorization || login.refreshToken) && login.scopes.length > 0) {
          remember(issued.token, login);
          remember(issued.access_token, login);
        }
      }
    }
    reply(response, answer.status, answerHeaders(answer.headers, request), answer.body);
  }

  /**
   * A fresh Authorization for an upload whose token was refused (401), from what its client
   * logged in with through the relay, for exactly the scopes the expired token carried (a
   * pull-only token is renewed pull-only); null when the relay cannot (no remembered
   * login, or the login is refused now).
   */
  async function refreshed(authorization, name, challenge) {
    const token = /^bearer (\S+)/i.exec(authorization ?? "")?.[1];
    const login = token ? logins.get(token) : undefined;
    if (!login || login.until < Date.now() || !tokenPath || login.scopes.length === 0) return null;
    const service = /service="([^"]*)"/.exec(challenge ?? "")?.[1] ?? login.service;
    let answer;
    if (login.authorization) {
      const query = new URLSearchParams({ service });
      for (const scope of login.scopes) query.append("scope", scope);
      answer = await upstream("GET", `${tokenPath}?${query}`, { Authorization: login.authorization });
    } else {
      const form = new URLSearchParams({
        grant_type: "refresh_token",
        refresh_token: login.refreshToken,
        service,
        scope: login.scopes.join(" "),
        client_id: "edge-registry-relay",
      });
      answer = await upstream(
        "POST",
        tokenPath,
        { "Content-Type": "application/x-www-form-urlencoded" },
        form.toString(),
      );
    }
    const issued = answer.status === 200 ? tokenAnswerJson(answer) : null;
    const fresh = issued?.token ?? issued?.access_token;
    if (typeof fresh !== "string" || fresh === "") return null;
    remember(fresh, login);
    log(
      `relay: ${name}: the client's token expired during the upload; continuing with a fresh one ` +
        `(${login.scopes.join(" ")})`,
    );
    return `Bearer ${fresh}`;
  }

  // ---- pass-through ----

  /** Everything but large upload bodies and token requests: forwarded as it is, both ways, streamed. */
  function passThrough(request, response) {
    const headers = forwardedHeaders(request);
    if (request.headers["transfer-encoding"] !== undefined) headers["Transfer-Encoding"] = "chunked";
    const hasBody =
      request.headers["transfer-encoding"] !== undefined || Number(request.headers["content-length"] ?? 0) > 0;
    upstream(request.method, request.url, headers, hasBody ? request : undefined, { stream: true }).then(
      ({ answer, outgoing }) => {
        if (request.method === "POST") learn(answer.headers);
        response.writeHead(answer.statusCode ?? 502, answerHeaders(answer.headers, request));
        answer.pipe(response);
        answer.on("aborted", () => response.destroy());
        // The client went away: so does the request to the registry.
        response.on("close", () => {
          if (!response.writableFinished) outgoing.destroy();
        });
      },
      (error) => {
        request.resume();
        replyError(response, unreachable(error));
      },
    );
  }

  // ---- uploads re-cut into chunks ----

  /**
   * A step of an upload, sent until it gets an answer that is not worth retrying: a 401
   * is retried once with a fresh token (refreshed), a network error or a transient status
   * after a growing wait; `retryable(status)` narrows what is retried (a chunk decides
   * for itself: it resumes from the offset).
   */
  async function step(upload, what, send, { retryable = transient } = {}) {
    for (let attempt = 1; ; attempt++) {
      let answer;
      try {
        answer = await send(upload.headers);
      } catch (error) {
        if (attempt >= ATTEMPTS) throw unreachable(error);
        log(`relay: ${upload.name}: ${what} failed (${error.code ?? error.message}); retrying`);
        await delay(Math.min(8000, 250 * 2 ** attempt));
        continue;
      }
      if (answer.status === 401 && !upload.refreshedAt401) {
        const fresh = await refreshed(
          upload.headers.Authorization ?? upload.headers.authorization,
          upload.name,
          answer.headers["www-authenticate"],
        ).catch(() => null);
        if (fresh) {
          upload.headers = Object.fromEntries(
            Object.entries(upload.headers).filter(([name]) => name.toLowerCase() !== "authorization"),
          );
          upload.headers.Authorization = fresh;
          upload.refreshedAt401 = true;
          continue;
        }
      }
      if (answer.status !== 401) upload.refreshedAt401 = false;
      if (!retryable(answer.status) || attempt >= ATTEMPTS) return answer;
      log(`relay: ${upload.name}: ${what} got ${answer.status}; retrying`);
      await delay(Math.min(8000, 250 * 2 ** attempt));
    }
  }

  /** The upload's offset as the registry has it (GET of the upload: `Range: 0-<last>`). */
  async function offsetOf(upload, location) {
    const answer = await step(upload, "asking for the upload's offset", (headers) =>
      upstream("GET", location, headers),
    );
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
   * PATCHed with Content-Range, resumed from the registry's offset when it fails. Returns
   * the last answer's Location and the registry's last answer. The spool directory is
   * removed however it ends, once the read of the next chunk has settled.
   */
  async function sendInChunks(upload, source, location, offset, progress) {
    const size = chunkBytes();
    const dir = await mkdtemp(join(spoolDir, "edge-registry-relay-"));
    spools.add(dir);
    let pending = Promise.resolve({ length: 0 });
    try {
      let nextFile = 0;
      const fill = () => source.take(size, join(dir, `chunk-${nextFile++ % 2}`));
      pending = fill();
      let last = null;
      for (;;) {
        const current = await pending;
        if (current.length === 0) break;
        pending = current.length < size ? Promise.resolve({ length: 0 }) : fill();
        // Keep the next read going while this chunk is sent; its failure surfaces when awaited.
        pending.catch(() => undefined);
        last = await sendChunk(upload, current, location, offset);
        location = last.location;
        offset += current.length;
        progress.sent(current.length);
      }
      return { location, answer: last?.answer ?? null };
    } finally {
      await pending.catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
      spools.delete(dir);
    }
  }

  async function sendChunk(upload, { file, length }, location, start) {
    let skip = 0;
    for (let attempt = 1; ; attempt++) {
      const answer = await step(
        upload,
        `a chunk (${start + skip}-${start + length - 1})`,
        (headers) =>
          upstream(
            "PATCH",
            location,
            {
              ...headers,
              "Content-Type": "application/octet-stream",
              "Content-Length": String(length - skip),
              "Content-Range": `${start + skip}-${start + length - 1}`,
            },
            () => createReadStream(file, { start: skip, highWaterMark: 1024 * 1024 }),
          ),
        // Anything transient is resumed from the registry's offset below, not resent blindly.
        { retryable: () => false },
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
      if (!transient(answer.status) || attempt >= ATTEMPTS) {
        throw new RelayError(
          answer.status,
          "BLOB_UPLOAD_INVALID",
          `the registry refused a chunk (${answer.status})`,
          answer,
        );
      }
      // A busy session (another request of ours still holds it), an offset that moved, or
      // a failure: wait, ask where the upload stands, and go on from there.
      log(`relay: ${upload.name}: a chunk got ${answer.status}; asking the registry where to resume`);
      await delay(Math.min(8000, 500 * 2 ** attempt));
      const registryOffset = await offsetOf(upload, location);
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
  async function recut(request, response, match, source) {
    const name = match[1];
    const url = new URL(request.url, "http://relay");
    const upload = { name, headers: forwardedHeaders(request, { dropBody: true }), refreshedAt401: false };
    const digest = url.searchParams.get("digest");
    url.searchParams.delete("digest");
    let location = `${url.pathname}${url.search}`;
    let offset;
    if (request.method === "POST") {
      // A monolithic upload: start a session, send the chunks, commit.
      const started = await step(upload, "starting the upload", (headers) =>
        upstream("POST", location, { ...headers, "Content-Length": "0" }, ""),
      );
      if (started.status !== 202) {
        throw new RelayError(started.status, "BLOB_UPLOAD_INVALID", "the registry did not start an upload", started);
      }
      learn(started.headers);
      location = pathOf(started.headers.location);
      offset = 0;
    } else {
      const range = /^(?:bytes[ =])?(\d+)-\d+/.exec(request.headers["content-range"] ?? "");
      offset = range ? Number(range[1]) : await offsetOf(upload, location);
    }
    const progress = new Progress(name, digest ?? match[2], quiet, log);
    const sent = await sendInChunks(upload, source, location, offset, progress);
    progress.done();
    if (request.method === "PATCH") {
      const answered =
        sent.answer ??
        (await step(upload, "asking for the upload's state", (headers) => upstream("GET", sent.location, headers)));
      const answerStatus = answered.status === 204 ? 202 : answered.status;
      reply(response, answerStatus, { ...answerHeaders(answered.headers, request), "content-length": "0" });
      return;
    }
    const commit = new URL(sent.location, target.origin);
    commit.searchParams.set("digest", digest ?? "");
    // Commits are safe to retry on this registry (and on distribution): a lost answer is
    // answered again, not committed twice.
    const committed = await step(upload, "committing", (headers) =>
      upstream("PUT", `${commit.pathname}${commit.search}`, { ...headers, "Content-Length": "0" }, ""),
    );
    reply(response, committed.status, answerHeaders(committed.headers, request), committed.body);
  }

  /**
   * After an upload failed while its client may still be sending: answer with
   * `Connection: close`, read and drop what the client still sends, and close once it has
   * stopped or after LINGER_MS (a close while its bytes arrive would reset the connection
   * and could destroy the answer).
   */
  function failUpload(request, response, source, error) {
    if (!(error instanceof RelayError)) log(`relay: ${error.message}`);
    const socket = request.socket;
    // Node's server destroys a `Connection: close` socket as soon as the answer is written
    // (socket.destroySoon): a client still sending then gets a reset, its write fails with
    // EPIPE, and the answer can be lost with the reset (seen in test/e2e/relay.test.mjs).
    // This socket is closed below instead, once the client stopped sending.
    socket.destroySoon = () => undefined;
    replyError(response, error, { Connection: "close" });
    const timer = setTimeout(() => socket.destroy(), LINGER_MS);
    timer.unref();
    source.discard().finally(() => {
      clearTimeout(timer);
      socket.end();
    });
  }

  // No headersTimeout or requestTimeout: this server never listens, so Node never enforces
  // them; the listener does (limits).
  const server = http.createServer({ maxHeaderSize: 64 * 1024 });
  server.on("request", (request, response) => {
    if (!request.url.startsWith("/")) {
      // An absolute-form (`GET http://host/v2/`) or asterisk-form target: it would be sent
      // on as it is, and the registry cannot route it.
      request.resume();
      const body = ociError("UNSUPPORTED", "the request target must be a path (`GET /v2/ HTTP/1.1`)");
      reply(
        response,
        400,
        {
          "Content-Type": "application/json",
          "Content-Length": Buffer.byteLength(body),
          Connection: "close",
        },
        body,
      );
      return;
    }
    const path = new URL(request.url, "http://relay").pathname;
    if (tokenPath !== null && path === tokenPath) {
      passToken(request, response).catch((error) => replyError(response, error));
      return;
    }
    const match = UPLOAD_PATH.exec(request.url ?? "");
    const length = request.headers["content-length"];
    const unknownLength = request.headers["transfer-encoding"] !== undefined;
    const large = unknownLength || (length !== undefined && Number(length) > chunkBytes());
    const carriesLayer = ["PATCH", "PUT", "POST"].includes(request.method) && large;
    const committing = request.method !== "PATCH" && new URL(request.url, "http://relay").searchParams.has("digest");
    if (match && carriesLayer && (request.method === "PATCH" || committing)) {
      const source = new ByteSource(request);
      recut(request, response, match, source).catch((error) => failUpload(request, response, source, error));
      return;
    }
    passThrough(request, response);
  });
  server.on("clientError", (_error, socket) => socket.destroy());
  const listener = await listenRefusingTls(server, { port: listenPort, host, limits });
  relayOrigin = `http://${host.includes(":") ? `[${host}]` : host}:${listener.port}`;
  return {
    url: relayOrigin,
    port: listener.port,
    host,
    allInterfaces,
    limits: listener.limits,
    close: async () => {
      agent.destroy();
      await listener.close();
      await Promise.all([...spools].map((dir) => rm(dir, { recursive: true, force: true })));
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

  /** Writes up to `max` bytes into `file`; resolves { file, length } (length 0: the stream had ended). */
  async take(max, file) {
    const out = createWriteStream(file, { highWaterMark: 1024 * 1024 });
    let failed = null;
    const finished = new Promise((resolveFinish, rejectFinish) => {
      out.once("finish", resolveFinish);
      out.once("error", (error) => {
        failed = error;
        rejectFinish(error);
      });
    });
    finished.catch(() => undefined);
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
        if (!out.write(piece)) {
          // A spool that cannot be written (a full disk) fails the upload, never hangs it.
          await new Promise((resolveDrain, rejectDrain) => {
            out.once("drain", resolveDrain);
            out.once("error", rejectDrain);
          });
        }
        if (failed) throw failed;
      }
    } finally {
      out.end();
    }
    await finished;
    if ((await stat(file)).size !== taken) throw new Error("the spool file is not what was read");
    return { file, length: taken };
  }

  /** Reads what is left of the stream and drops it. */
  async discard() {
    this.leftover = null;
    try {
      while (!this.ended) {
        const next = await this.iterator.next();
        if (next.done) this.ended = true;
      }
    } catch {
      this.ended = true;
    }
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
