// Worker secrets (`wrangler secret put NAME`, or `.dev.vars` locally) and optional
// variables: not in wrangler.toml, so `wrangler types` does not know them. All optional; see docs/configuration.md.
declare namespace Cloudflare {
  interface Env {
    /** Bearer token for the /_admin endpoints (integrity check); unset disables them. */
    ADMIN_TOKEN?: string;
    /** htpasswd bcrypt lines `name:$2y$…` (see src/auth/policy.ts). Set: authentication is enforced. */
    AUTH_USERS?: string;
    /** JSON access rules (see src/auth/policy.ts); may be a plain variable instead. */
    AUTH_ACCESS?: string;
    /** JSON OIDC trust rules (see src/settings/oidc.ts); may be a plain variable instead. Set: authentication is enforced. */
    OIDC_TRUST?: string;
    /** `open`: no authentication (npm start sets it when no users are configured). */
    AUTH_MODE?: string;
    /** Key for signing tokens (HS256). Unset: derived from AUTH_USERS (see src/auth/tokens.ts). */
    TOKEN_SECRET?: string;
    /** The service name in challenges and the audience of tokens; default: the request's host. */
    AUTH_SERVICE?: string;
    /** The token endpoint's absolute URL in challenges; default: `<request origin>/token`. */
    AUTH_REALM?: string;
    /** Blob redirects (src/registry/blob-redirect.ts): off unless set; the smallest blob redirected. */
    BLOB_REDIRECT_MIN_BYTES?: string;
    /** How long a presigned blob URL is valid (default 300 s). */
    BLOB_REDIRECT_TTL_SECONDS?: string;
    /** R2's S3 API endpoint, `https://<account id>.r2.cloudflarestorage.com`. */
    R2_ENDPOINT?: string;
    /** The bucket BLOBS is bound to, as the S3 API names it. */
    R2_BUCKET_NAME?: string;
    /** An R2 API token's access key (read access to the bucket is enough). */
    R2_ACCESS_KEY_ID?: string;
    R2_SECRET_ACCESS_KEY?: string;
    /**
     * Set by `npm start` only (a random value per start): CF-Connecting-IP is trusted only
     * on requests carrying it (auth/client-address.ts). Never set on Cloudflare.
     */
    LOCAL_FRONT_SECRET?: string;
    /**
     * Webhook endpoints, JSON (src/settings/webhooks.ts; docs/configuration.md, "Events and
     * webhooks"). An endpoint's `secret` may name another secret holding its `whsec_` key.
     */
    WEBHOOKS?: string;
    /** A failed delivery's first retry delay (seconds; doubled per attempt), and the longest. */
    WEBHOOK_RETRY_BASE_SECONDS?: string;
    WEBHOOK_RETRY_MAX_SECONDS?: string;
    /** How long one delivery may wait for the endpoint's answer (seconds). */
    WEBHOOK_TIMEOUT_SECONDS?: string;
  }
}
