import { isolateEnv } from "./request-env";
import { RegistryError } from "../oci/errors";
import { parseAccess, type AccessSettings } from "./access";
import { parseImmutableTags, type ImmutableTags } from "./immutable";
import { parseRetention, type CompiledRule } from "./retention";
import { parseUpstreams, type Mirrors } from "../settings/upstreams";
import { parseOidcTrust, type OidcTrustRule } from "./oidc";
import { parseQuotas, type Quota } from "./quotas";
import { flag, integer, parseDuration, present, SettingsError } from "./values";
import { parseWebhooks, type WebhookSettings } from "./webhooks";

/**
 * Every setting of the registry, parsed and checked once per isolate (per `env` object)
 * from the Worker's environment: wrangler.toml [vars], secrets, and locally `.dev.vars`
 * or the environment. docs/configuration.md lists them all (a test checks it against
 * SETTING_NAMES). No other module reads a setting from `env`; a setting that does not
 * parse is one clear error naming it, for every request, rather than a guess.
 */
export interface Settings {
  /** Seconds an unused upload session lives before its alarm purges it. */
  uploadTtlSeconds: number;
  /** Size of every R2 multipart part but the last; the memory one upload request holds. */
  uploadPartSize: number;
  /** Whether DELETE of manifests, tags and blobs is allowed (distribution's storage.delete.enabled). */
  deleteEnabled: boolean;
  /**
   * Whether `POST ?mount=<digest>` without `from` links any stored blob with that digest
   * (automatic content discovery). Off by default: it lets a repository claim a blob it
   * never uploaded by knowing its digest.
   */
  mountWithoutFrom: boolean;
  /**
   * Most descriptors (config, layers, index children) a manifest may list. Each distinct
   * one costs storage reads when the manifest is pushed; see docs/configuration.md.
   */
  manifestMaxReferences: number;
  /** Most tags one manifest PUT may set (the reference's and `?tag=`), each an `OCI-Tag` header. */
  manifestMaxTags: number;
  /**
   * How long a deleted repository link may stay visible at other locations: pull paths
   * read links from KV with this `cacheTtl` (KV's minimum, 60 s, applies). 0: links are
   * read from R2 on every pull (strong).
   */
  edgeLinkTtlSeconds: number;
  /** How long a tag may resolve to its old digest at other locations; 0 (default): tags read from R2. */
  edgeTagTtlSeconds: number;
  /** Largest blob the edge cache (Cache API) holds; larger ones stream from R2 on every pull. */
  edgeCacheMaxBytes: number;
  /** Whether the edge cache is used at all (it does nothing on workers.dev hosts either way). */
  edgeCacheEnabled: boolean;
  /**
   * The largest request body an upload may carry (MAX_CHUNK_LENGTH: the plan's limit when
   * deployed); undefined: no limit of our own.
   */
  maxChunkLength: number | undefined;
  /** Users, access rules and the mode they put the registry in. */
  access: AccessSettings;
  /** OIDC_TRUST: the issuers whose ID tokens log in as `oidc`, and what they grant (none: OIDC is off). */
  oidc: OidcTrustRule[];
  tokens: TokenSettingsBase;
  logins: LoginSettings;
  /**
   * Locally (`npm start`): the secret only the front sends, without which a request's
   * `CF-Connecting-IP` is not believed (auth/client-address.ts). Unset on Cloudflare.
   */
  localFrontSecret: string | undefined;
  /** Bearer token of the /_admin endpoints; undefined: they are off. */
  adminToken: string | undefined;
  /** Redirects of large blobs to presigned R2 URLs; null: off. */
  blobRedirect: BlobRedirectSettings | null;
  gc: { graceSeconds: number; retention: CompiledRule[] };
  /** IMMUTABLE_TAGS: tags that, once set, always name the same manifest (none: every tag moves). */
  immutableTags: ImmutableTags;
  mirrors: Mirrors;
  /** The audit log (src/audit): rows older than `retentionDays` are pruned by the daily cron. */
  audit: { retentionDays: number };
  /**
   * How long one isolate lets a manifest's pull record stand before it writes it again
   * (seconds): at most one write per manifest and interval, the pulls between counted in
   * memory and added to the next (registry/pull-recorder.ts). Null: pulls are not recorded.
   */
  pullRecordIntervalSeconds: number | null;
  /** Webhook endpoints events are delivered to (none: events are off), and how deliveries retry. */
  webhooks: WebhookSettings;
  /** Storage quotas per namespace (QUOTAS; none: no limits, and nothing is counted). */
  quotas: Quota[];
}

export interface TokenSettingsBase {
  /** TOKEN_SECRET; required with users (checked by parseAccess). */
  secret: string | undefined;
  /** The service tokens are issued for (their audience); undefined: the request's host. */
  service: string | undefined;
  /** The token endpoint's URL in challenges; undefined: `<request origin>/token`. */
  realm: string | undefined;
  accessTtlSeconds: number;
  refreshTtlSeconds: number;
}

/**
 * Failed logins: after `maxFailures` a user name, or after `maxFailuresPerAddress` a client
 * address, is locked for `lockoutSeconds`, doubled with each further failure up to
 * `maxLockoutSeconds`. An address may fail more often than a user name: several people
 * can share one (a NAT, a proxy, an IPv6 /64), and a lock of it refuses all of them; what
 * it must stop is one address trying a few passwords against many user names.
 */
export interface LoginSettings {
  maxFailures: number;
  maxFailuresPerAddress: number;
  lockoutSeconds: number;
  maxLockoutSeconds: number;
}

/** docs/configuration.md, "Blob redirects". */
export interface BlobRedirectSettings {
  minBytes: number;
  ttlSeconds: number;
  /** R2's S3 API endpoint, `https://<account id>.r2.cloudflarestorage.com`. */
  endpoint: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
}

/** R2's multipart limits: every part but the last the same size, at least 5 MiB; at most 10 000 parts. */
export const MIN_PART_BYTES = 5 * 1024 * 1024;
export const MAX_PARTS = 10_000;
/** Part buffers beyond this would not fit a 128 MB isolate next to the request. */
const MAX_PART_BYTES = 64 * 1024 * 1024;
/** SigV4 presigned URLs live at most a week. */
const MAX_REDIRECT_TTL_SECONDS = 7 * 24 * 60 * 60;

/** Every setting name the registry reads (docs/configuration.md lists each; a test checks it). */
export const SETTING_NAMES = [
  "UPLOAD_TTL_SECONDS",
  "UPLOAD_PART_SIZE",
  "DELETE_ENABLED",
  "MOUNT_WITHOUT_FROM",
  "MANIFEST_MAX_REFERENCES",
  "MANIFEST_MAX_TAGS",
  "EDGE_LINK_TTL_SECONDS",
  "EDGE_TAG_TTL_SECONDS",
  "EDGE_CACHE_MAX_BYTES",
  "EDGE_CACHE",
  "MAX_CHUNK_LENGTH",
  "AUTH_MODE",
  "AUTH_USERS",
  "AUTH_ACCESS",
  "OIDC_TRUST",
  "TOKEN_SECRET",
  "AUTH_SERVICE",
  "AUTH_REALM",
  "TOKEN_TTL_SECONDS",
  "REFRESH_TOKEN_TTL_SECONDS",
  "LOGIN_MAX_FAILURES",
  "LOGIN_MAX_FAILURES_PER_ADDRESS",
  "LOGIN_LOCKOUT_SECONDS",
  "LOGIN_LOCKOUT_MAX_SECONDS",
  "ADMIN_TOKEN",
  "LOCAL_FRONT_SECRET",
  "BLOB_REDIRECT_MIN_BYTES",
  "BLOB_REDIRECT_TTL_SECONDS",
  "R2_ENDPOINT",
  "R2_BUCKET_NAME",
  "R2_ACCESS_KEY_ID",
  "R2_SECRET_ACCESS_KEY",
  "GC_GRACE_SECONDS",
  "RETENTION",
  "IMMUTABLE_TAGS",
  "UPSTREAMS",
  "UPSTREAM_DEFAULT",
  "AUDIT_RETENTION_DAYS",
  "PULL_RECORD_INTERVAL",
  "WEBHOOKS",
  "WEBHOOK_RETRY_BASE_SECONDS",
  "WEBHOOK_RETRY_MAX_SECONDS",
  "WEBHOOK_TIMEOUT_SECONDS",
  "QUOTAS",
] as const;

function parseBlobRedirect(env: Env): BlobRedirectSettings | null {
  const minBytes = integer("BLOB_REDIRECT_MIN_BYTES", env.BLOB_REDIRECT_MIN_BYTES, 0);
  if (minBytes === 0) return null;
  const required = {
    R2_ENDPOINT: env.R2_ENDPOINT,
    R2_BUCKET_NAME: env.R2_BUCKET_NAME,
    R2_ACCESS_KEY_ID: env.R2_ACCESS_KEY_ID,
    R2_SECRET_ACCESS_KEY: env.R2_SECRET_ACCESS_KEY,
  };
  const missing = Object.entries(required)
    .filter(([, value]) => present(value) === undefined)
    .map(([name]) => name);
  if (missing.length > 0) {
    throw new SettingsError(`blob redirects are on (BLOB_REDIRECT_MIN_BYTES) but need ${missing.join(", ")}`);
  }
  return {
    minBytes,
    ttlSeconds: integer("BLOB_REDIRECT_TTL_SECONDS", env.BLOB_REDIRECT_TTL_SECONDS, 300, {
      min: 1,
      max: MAX_REDIRECT_TTL_SECONDS,
    }),
    endpoint: (required.R2_ENDPOINT ?? "").trim().replace(/\/+$/, ""),
    bucket: (required.R2_BUCKET_NAME ?? "").trim(),
    accessKeyId: (required.R2_ACCESS_KEY_ID ?? "").trim(),
    secretAccessKey: (required.R2_SECRET_ACCESS_KEY ?? "").trim(),
  };
}

function parseLogins(env: Env): LoginSettings {
  const lockoutSeconds = integer("LOGIN_LOCKOUT_SECONDS", env.LOGIN_LOCKOUT_SECONDS, 10, { min: 1 });
  return {
    maxFailures: integer("LOGIN_MAX_FAILURES", env.LOGIN_MAX_FAILURES, 5, { min: 1 }),
    maxFailuresPerAddress: integer("LOGIN_MAX_FAILURES_PER_ADDRESS", env.LOGIN_MAX_FAILURES_PER_ADDRESS, 20, {
      min: 1,
    }),
    lockoutSeconds,
    maxLockoutSeconds: Math.max(
      lockoutSeconds,
      integer("LOGIN_LOCKOUT_MAX_SECONDS", env.LOGIN_LOCKOUT_MAX_SECONDS, 900, { min: 1 }),
    ),
  };
}

/** The longest PULL_RECORD_INTERVAL: a recorded pull may be this far behind the last one. */
const MAX_PULL_RECORD_INTERVAL_SECONDS = 30 * 86_400;

/**
 * PULL_RECORD_INTERVAL: a duration (a day by default); `off` or `0`: pulls are not
 * recorded, which a RETENTION rule with `pulledWithin` cannot do without.
 */
function parsePullRecording(env: Env, retention: CompiledRule[]): number | null {
  const value = present(env.PULL_RECORD_INTERVAL);
  const seconds =
    value === undefined ? 86_400 : value.toLowerCase() === "off" ? 0 : parseDuration(value, "PULL_RECORD_INTERVAL");
  if (seconds > MAX_PULL_RECORD_INTERVAL_SECONDS) {
    throw new SettingsError(`PULL_RECORD_INTERVAL: "${value ?? ""}" is longer than 30 days`);
  }
  const needsPulls = retention.findIndex((rule) => rule.pulledWithin !== undefined);
  if (seconds === 0 && needsPulls >= 0) {
    throw new SettingsError(
      `RETENTION[${needsPulls}].pulledWithin needs pull records, and PULL_RECORD_INTERVAL turns them off`,
    );
  }
  return seconds === 0 ? null : seconds;
}

/** Parses every setting; throws a SettingsError naming the first that does not parse. */
export function parseSettings(env: Env): Settings {
  const maxChunkLength = integer("MAX_CHUNK_LENGTH", env.MAX_CHUNK_LENGTH, 0);
  const access = parseAccess(env);
  const oidc = parseOidcTrust(env.OIDC_TRUST);
  if (oidc.length > 0 && access.users.has("oidc")) {
    throw new SettingsError(
      'OIDC_TRUST: the user name "oidc" is the OIDC login; AUTH_USERS must not have a user of that name',
    );
  }
  const retention = parseRetention(env.RETENTION);
  return {
    uploadTtlSeconds: integer("UPLOAD_TTL_SECONDS", env.UPLOAD_TTL_SECONDS, 7 * 24 * 60 * 60, { min: 1 }),
    uploadPartSize: integer("UPLOAD_PART_SIZE", env.UPLOAD_PART_SIZE, 16 * 1024 * 1024, {
      min: MIN_PART_BYTES,
      max: MAX_PART_BYTES,
    }),
    deleteEnabled: flag("DELETE_ENABLED", env.DELETE_ENABLED, true),
    mountWithoutFrom: flag("MOUNT_WITHOUT_FROM", env.MOUNT_WITHOUT_FROM, false),
    manifestMaxReferences: integer("MANIFEST_MAX_REFERENCES", env.MANIFEST_MAX_REFERENCES, 1000, { min: 1 }),
    manifestMaxTags: integer("MANIFEST_MAX_TAGS", env.MANIFEST_MAX_TAGS, 20, { min: 1 }),
    edgeLinkTtlSeconds: integer("EDGE_LINK_TTL_SECONDS", env.EDGE_LINK_TTL_SECONDS, 60),
    edgeTagTtlSeconds: integer("EDGE_TAG_TTL_SECONDS", env.EDGE_TAG_TTL_SECONDS, 0),
    // Under the Cache API's per-object limit on the Free, Pro and Business plans (512 MB).
    edgeCacheMaxBytes: integer("EDGE_CACHE_MAX_BYTES", env.EDGE_CACHE_MAX_BYTES, 500_000_000),
    edgeCacheEnabled: flag("EDGE_CACHE", env.EDGE_CACHE, true),
    maxChunkLength: maxChunkLength === 0 ? undefined : maxChunkLength,
    access,
    oidc,
    tokens: {
      secret: present(env.TOKEN_SECRET),
      service: present(env.AUTH_SERVICE),
      realm: present(env.AUTH_REALM),
      accessTtlSeconds: integer("TOKEN_TTL_SECONDS", env.TOKEN_TTL_SECONDS, 300, { min: 1 }),
      refreshTtlSeconds: integer("REFRESH_TOKEN_TTL_SECONDS", env.REFRESH_TOKEN_TTL_SECONDS, 30 * 24 * 60 * 60, {
        min: 1,
      }),
    },
    logins: parseLogins(env),
    adminToken: present(env.ADMIN_TOKEN),
    localFrontSecret: present(env.LOCAL_FRONT_SECRET),
    blobRedirect: parseBlobRedirect(env),
    gc: {
      graceSeconds: integer("GC_GRACE_SECONDS", env.GC_GRACE_SECONDS, 86_400),
      retention,
    },
    immutableTags: parseImmutableTags(env.IMMUTABLE_TAGS),
    // An upstream's `credentials` names a secret of any name: read from the environment here.
    mirrors: parseUpstreams(env.UPSTREAMS, env.UPSTREAM_DEFAULT, env as unknown as Record<string, unknown>),
    audit: { retentionDays: integer("AUDIT_RETENTION_DAYS", env.AUDIT_RETENTION_DAYS, 90, { min: 1, max: 36_500 }) },
    pullRecordIntervalSeconds: parsePullRecording(env, retention),
    // An endpoint's `secret` may name a secret of any name, read from the environment here.
    webhooks: parseWebhooks(
      env.WEBHOOKS,
      {
        retryBaseSeconds: env.WEBHOOK_RETRY_BASE_SECONDS,
        retryMaxSeconds: env.WEBHOOK_RETRY_MAX_SECONDS,
        timeoutSeconds: env.WEBHOOK_TIMEOUT_SECONDS,
      },
      env as unknown as Record<string, unknown>,
    ),
    quotas: parseQuotas(env.QUOTAS),
  };
}

/** Parsed settings by the `env` object they came from: the Worker's is one object per isolate. */
const parsed = new WeakMap<object, Settings>();

/**
 * The registry's settings (parsed once per isolate). A setting that does not parse is a
 * 500 naming it, on every request: a registry must not run on a guess (a broken access
 * rule must not fall open).
 */
export function settingsOf(requestEnv: Env): Settings {
  // Per isolate: a request's env (registry/meter.ts `withMeter`) has the Worker's behind it.
  const env = isolateEnv(requestEnv);
  const known = parsed.get(env);
  if (known) return known;
  try {
    const settings = parseSettings(env);
    parsed.set(env, settings);
    return settings;
  } catch (error) {
    if (error instanceof SettingsError) throw new RegistryError("UNKNOWN", `settings: ${error.message}`);
    throw error;
  }
}
