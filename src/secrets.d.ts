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
    /** `open`: no authentication (npm start sets it when no users are configured). */
    AUTH_MODE?: string;
    /** Key for signing tokens (HS256). Unset: derived from AUTH_USERS (see src/auth/tokens.ts). */
    TOKEN_SECRET?: string;
    /** The service name in challenges and the audience of tokens; default: the request's host. */
    AUTH_SERVICE?: string;
    /** The token endpoint's absolute URL in challenges; default: `<request origin>/token`. */
    AUTH_REALM?: string;
  }
}
