import { RegistryError } from "../oci/errors";
import { readAtMost } from "../registry/bounded";
import { metered, type Meter } from "../registry/meter";
import type { Upstream } from "../settings/upstreams";

/**
 * Requests to an upstream registry, with its authentication (docs/configuration.md,
 * "Mirroring"):
 * - a 401 with a `Bearer realm=…,service=…,scope=…` challenge gets a token from the
 *   realm (anonymously, or with the configured `username:password`), kept in this
 *   isolate until shortly before it expires, and the request is sent again with it;
 * - a 401 with a `Basic` challenge is answered with the configured `username:password`;
 * - a configured bare token is sent as a Bearer token on every request.
 * Redirects are followed only where registries send them, for a blob's bytes (Docker Hub
 * and S3-backed registries send them to a CDN or a signed URL), and only to http(s), by
 * hand, without the credentials once they leave the upstream's origin. Any other answer
 * (a manifest, a tag list, a token) comes from its own origin: a redirect there is
 * returned as the answer, which callers treat as the upstream failing. Only the wait for
 * the answer's headers is bounded by the upstream's timeout: a body may take as long as
 * it streams.
 *
 * UpstreamUnreachable's message names addresses (the upstream's URL, a Location, a realm):
 * it is for the log, never for a client (Mirror.unreachable).
 */

/** An upstream that could not be asked (network, timeout): the mirror then serves what it has. */
export class UpstreamUnreachable extends Error {}

interface CachedToken {
  value: string;
  expires: number;
}

/** Tokens by upstream and scope, in this isolate. */
const tokens = new Map<string, CachedToken>();
const TOKENS_MAX = 1000;
/** Used before this much of a token's life is left. */
const TOKEN_MARGIN_MS = 10_000;
const DEFAULT_TOKEN_SECONDS = 60;
const MAX_REDIRECTS = 5;

/** A challenge's scheme and parameters (`Bearer realm="…",service="…"`). */
export function parseChallenge(header: string | null): { scheme: string; params: Record<string, string> } | null {
  if (!header) return null;
  const match = /^\s*(\w+)\s*(.*)$/.exec(header);
  if (!match) return null;
  const params: Record<string, string> = {};
  const pattern = /([a-zA-Z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))/g;
  for (const param of (match[2] ?? "").matchAll(pattern)) {
    params[(param[1] ?? "").toLowerCase()] = (param[2] ?? param[3] ?? "").replace(/\\(.)/g, "$1");
  }
  return { scheme: (match[1] ?? "").toLowerCase(), params };
}

function credentialsOf(upstream: Upstream): { basic?: string; token?: string } {
  return upstream.login ?? {};
}

export interface UpstreamRequest {
  method: "GET" | "HEAD";
  /** Path under `/v2/` (`library/alpine/manifests/latest`), with any query. */
  path: string;
  headers?: Record<string, string>;
  /** The scope a token must grant (`repository:library/alpine:pull`). */
  scope: string;
  /**
   * true: a redirect is followed (a blob's bytes, and the HEAD describing them). Otherwise
   * a redirect is the answer: a manifest or a tag list comes from the upstream itself, and
   * a HEAD that must prove a stored blob is the upstream's own word or nothing.
   */
  follow?: boolean;
}

export class UpstreamClient {
  /** `meter`: the request's, for Server-Timing (`upstream`), when the caller has it. */
  constructor(
    readonly upstream: Upstream,
    private readonly meter?: Meter,
  ) {}

  private tokenKey(scope: string): string {
    return `${this.upstream.prefix} ${this.upstream.url} ${scope}`;
  }

  /**
   * The upstream's answer (any status: the caller maps it), after at most one round of
   * authentication. Throws UpstreamUnreachable when there is no answer in time.
   */
  async fetch(request: UpstreamRequest): Promise<Response> {
    return metered(
      "upstream",
      request.method,
      async () => {
        const credentials = credentialsOf(this.upstream);
        const cached = tokens.get(this.tokenKey(request.scope));
        let authorization =
          credentials.token ?? (cached && cached.expires > Date.now() ? `Bearer ${cached.value}` : undefined);
        let response = await this.send(request, authorization);
        if (response.status !== 401 || credentials.token) return response;
        const challenge = parseChallenge(response.headers.get("WWW-Authenticate"));
        if (challenge?.scheme === "bearer" && challenge.params.realm) {
          authorization = await this.bearer(challenge.params, request.scope, credentials.basic);
        } else if (challenge?.scheme === "basic" && credentials.basic) {
          authorization = credentials.basic;
        } else {
          return response;
        }
        await response.body?.cancel();
        response = await this.send(request, authorization);
        return response;
      },
      this.meter,
    );
  }

  /** Gets a token from the challenge's realm; the anonymous flow when no credentials are configured. */
  private async bearer(params: Record<string, string>, scope: string, basic?: string): Promise<string> {
    const realm = urlOrNull(params.realm ?? "");
    if (!realm || (realm.protocol !== "https:" && realm.protocol !== "http:")) {
      throw new UpstreamUnreachable(`the upstream's challenge names no usable token service: ${params.realm ?? ""}`);
    }
    if (params.service) realm.searchParams.set("service", params.service);
    realm.searchParams.append("scope", params.scope ?? scope);
    // Not followed: a token comes from the realm the challenge named (a redirect fails it, below).
    const response = await this.timed(realm.toString(), {
      method: "GET",
      headers: basic ? { Authorization: basic } : {},
      redirect: "manual",
    });
    if (!response.ok) {
      await response.body?.cancel();
      if (response.status === 401 || response.status === 403) {
        throw new RegistryError("DENIED", "the upstream's token service refused the mirror's credentials", {
          upstream: this.upstream.prefix,
          status: response.status,
        });
      }
      throw new UpstreamUnreachable(`the upstream's token service answered ${response.status}`);
    }
    const body: unknown = await readBody(response, TOKEN_MAX_BYTES, this.upstream.timeoutMs)
      .then((bytes) => JSON.parse(new TextDecoder().decode(bytes)) as unknown)
      .catch(() => null);
    const record = (typeof body === "object" && body !== null ? body : {}) as Record<string, unknown>;
    const token = typeof record.token === "string" ? record.token : record.access_token;
    if (typeof token !== "string" || token === "") {
      throw new UpstreamUnreachable("the upstream's token service answered without a token");
    }
    const seconds =
      typeof record.expires_in === "number" && record.expires_in > 0 ? record.expires_in : DEFAULT_TOKEN_SECONDS;
    if (tokens.size >= TOKENS_MAX) tokens.clear();
    tokens.set(this.tokenKey(scope), { value: token, expires: Date.now() + seconds * 1000 - TOKEN_MARGIN_MS });
    return `Bearer ${token}`;
  }

  /**
   * One request; with `follow`, redirects are followed by hand, to http(s) only, and the
   * credentials go only to the upstream's own origin.
   */
  private async send(request: UpstreamRequest, authorization: string | undefined): Promise<Response> {
    let url = new URL(`${this.upstream.url}/v2/${request.path}`);
    const origin = url.origin;
    for (let hop = 0; ; hop++) {
      const headers: Record<string, string> = { ...request.headers };
      if (authorization && url.origin === origin) headers.Authorization = authorization;
      const response = await this.timed(url.toString(), { method: request.method, headers, redirect: "manual" });
      const location = response.headers.get("Location");
      const redirected = response.status >= 300 && response.status < 400 && location !== null;
      if (!redirected || request.follow !== true || hop >= MAX_REDIRECTS) return response;
      await response.body?.cancel();
      const next = urlOrNull(location, url);
      if (!next || (next.protocol !== "https:" && next.protocol !== "http:")) {
        throw new UpstreamUnreachable(`the upstream redirected to an unusable URL: ${location}`);
      }
      url = next;
    }
  }

  /** fetch, with the upstream's timeout on the wait for headers only. */
  private async timed(url: string, init: RequestInit): Promise<Response> {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.upstream.timeoutMs);
    try {
      return await fetch(url, { ...init, signal: controller.signal });
    } catch (error) {
      throw new UpstreamUnreachable(
        controller.signal.aborted
          ? `no answer from ${this.upstream.url} within ${this.upstream.timeoutMs} ms`
          : `${this.upstream.url} could not be reached: ${String(error)}`,
      );
    } finally {
      clearTimeout(timer);
    }
  }
}

function urlOrNull(text: string, base?: URL): URL | null {
  try {
    return new URL(text, base);
  } catch {
    return null;
  }
}

/** Largest token answer read. */
const TOKEN_MAX_BYTES = 64 * 1024;

/**
 * A small upstream body (a manifest, a tag list, a token) of at most `limit` bytes, read
 * within `timeoutMs`: one that is longer, stalls or breaks off is the upstream failing
 * (UpstreamUnreachable), never a hang or a 500.
 */
export async function readBody(response: Response, limit: number, timeoutMs: number): Promise<Uint8Array<ArrayBuffer>> {
  const declared = Number(response.headers.get("Content-Length") ?? "NaN");
  if (declared > limit) {
    await response.body?.cancel();
    throw new UpstreamUnreachable(`the upstream's answer exceeds ${limit} bytes`);
  }
  if (!response.body) return new Uint8Array(0);
  const tooLarge = () => new UpstreamUnreachable(`the upstream's answer exceeds ${limit} bytes`);
  return readAtMost(response.body, limit, tooLarge, timeoutMs).catch((error: unknown) => {
    throw error instanceof UpstreamUnreachable
      ? error
      : new UpstreamUnreachable(`the upstream's answer broke off or stalled: ${String(error)}`);
  });
}

/**
 * The OCI error for an upstream's failing answer: 404 is the thing's absence, 429 passes
 * its Retry-After on, a refusal of access is DENIED (never a 401, which would send the
 * client to log in here for nothing), anything else is UNAVAILABLE. Never a 500.
 */
export function upstreamError(
  response: Response,
  unknown: "MANIFEST_UNKNOWN" | "BLOB_UNKNOWN" | "NAME_UNKNOWN",
  detail: Record<string, unknown>,
): RegistryError {
  const withStatus = { ...detail, upstreamStatus: response.status };
  if (response.status === 404) return new RegistryError(unknown, undefined, withStatus);
  if (response.status === 429) {
    const retryAfter = response.headers.get("Retry-After") ?? "60";
    return new RegistryError("TOOMANYREQUESTS", "the upstream registry is rate-limiting this mirror", withStatus, {
      "Retry-After": retryAfter,
    });
  }
  if (response.status === 416) {
    return new RegistryError("RANGE_INVALID", undefined, withStatus, {
      "Content-Range": response.headers.get("Content-Range") ?? "bytes */*",
    });
  }
  if (response.status === 401 || response.status === 403) {
    return new RegistryError(
      "DENIED",
      "the upstream registry refused access: the repository does not exist there, or needs credentials",
      withStatus,
    );
  }
  return new RegistryError("UNAVAILABLE", `the upstream registry answered ${response.status}; retry`, withStatus, {
    "Retry-After": "5",
  });
}
