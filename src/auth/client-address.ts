import { settingsOf } from "../settings/settings";

/**
 * Whose address a request carries. On Cloudflare, `CF-Connecting-IP` is set by the edge
 * and clients cannot choose it, so the failed-login limit per address (logins.ts) trusts
 * it. Locally (`npm start`) the front sets it from the connection (scripts/lib/front.mjs),
 * but workerd's own port is on 127.0.0.1 too, visible in `ps`: anything on the machine
 * could send a request there with an address of its choosing and so step around the
 * per-address limit. So the local server binds LOCAL_FRONT_SECRET, a random value made
 * per start (scripts/lib/local-worker.mjs) that only the front sends, in
 * FRONT_SECRET_HEADER, and with it set the address is trusted only beside the secret.
 */
export const FRONT_SECRET_HEADER = "X-Local-Front-Secret";

function sameSecret(presented: string, expected: string): boolean {
  const encoder = new TextEncoder();
  const left = encoder.encode(presented);
  const right = encoder.encode(expected);
  return left.byteLength === right.byteLength && crypto.subtle.timingSafeEqual(left, right);
}

/**
 * The request as the rest of the Worker should see it: unchanged without LOCAL_FRONT_SECRET
 * (on Cloudflare); with it, never carrying the secret, and carrying `CF-Connecting-IP`
 * only when the front vouched for it. A request without the secret loses its address:
 * all such requests count as one client, "unknown", for the failed-login limit.
 */
export function withVerifiedClientAddress(request: Request, env: Env): Request {
  let secret: string | undefined;
  try {
    secret = settingsOf(env).localFrontSecret;
  } catch {
    // Settings that do not parse: the app answers with the error naming them.
    return request;
  }
  if (secret === undefined) return request;
  const presented = request.headers.get(FRONT_SECRET_HEADER);
  const address = request.headers.get("CF-Connecting-IP");
  if (presented === null && address === null) return request;
  const headers = new Headers(request.headers);
  headers.delete(FRONT_SECRET_HEADER);
  if (presented === null || !sameSecret(presented, secret)) headers.delete("CF-Connecting-IP");
  return new Request(request, { headers });
}
