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

/** Compares in time that depends on the lengths only (the secret is 64 hex characters). */
function sameSecret(presented: string, expected: string): boolean {
  if (presented.length !== expected.length) return false;
  let difference = 0;
  for (let index = 0; index < expected.length; index++)
    difference |= presented.charCodeAt(index) ^ expected.charCodeAt(index);
  return difference === 0;
}

/**
 * The client's address as this Worker believes it; undefined: unknown. `CF-Connecting-IP`
 * as sent without LOCAL_FRONT_SECRET (on Cloudflare); with it, believed only beside the
 * front's secret, else no address at all: all such requests count as one client,
 * "unknown", for the failed-login limit. Judged when asked (a login, a change's context),
 * not as each request arrives: most requests never ask, and the check cost every small
 * request locally a few per cent of its CPU. The request is not copied either (a copy to
 * drop two headers cost a small request a tenth of its CPU); the secret goes no further
 * than this Worker (a request forwarded to an upload's object drops it: routes/uploads.ts).
 */
export function clientAddressOf(request: Request, env: Env): string | undefined {
  const address = request.headers.get("CF-Connecting-IP");
  if (address === null) return undefined;
  let secret: string | undefined;
  try {
    secret = settingsOf(env).localFrontSecret;
  } catch {
    // Settings that do not parse: the app answers with the error naming them.
    return undefined;
  }
  if (secret === undefined) return address;
  const presented = request.headers.get(FRONT_SECRET_HEADER);
  return presented !== null && sameSecret(presented, secret) ? address : undefined;
}
