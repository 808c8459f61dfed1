// Worker secrets (`wrangler secret put NAME`, or `.dev.vars` locally): not in wrangler.toml,
// so `wrangler types` does not know them. All optional; see docs/configuration.md.
declare namespace Cloudflare {
  interface Env {
    /** Bearer token for the /_admin endpoints (integrity check); unset disables them. */
    ADMIN_TOKEN?: string;
  }
}
