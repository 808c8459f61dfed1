/**
 * Standard Webhooks signatures (https://www.standardwebhooks.com): a delivery carries
 * `webhook-id` (the event's id), `webhook-timestamp` (seconds) and `webhook-signature:
 * v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, keyed with the base64-decoded part
 * of the endpoint's `whsec_…` secret. A receiver recomputes it (docs/operations.md shows
 * how), rejects stale timestamps, and drops ids it has seen.
 */

const keys = new WeakMap<Uint8Array, Promise<CryptoKey>>();

function hmacKey(key: Uint8Array<ArrayBuffer>): Promise<CryptoKey> {
  let imported = keys.get(key);
  if (!imported) {
    imported = crypto.subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, ["sign", "verify"]);
    keys.set(key, imported);
  }
  return imported;
}

function base64(bytes: ArrayBuffer): string {
  let text = "";
  for (const byte of new Uint8Array(bytes)) text += String.fromCharCode(byte);
  return btoa(text);
}

/** The `webhook-signature` value of a delivery. */
export async function webhookSignature(
  key: Uint8Array<ArrayBuffer>,
  id: string,
  timestamp: number,
  body: string,
): Promise<string> {
  const signed = new TextEncoder().encode(`${id}.${timestamp}.${body}`);
  return `v1,${base64(await crypto.subtle.sign("HMAC", await hmacKey(key), signed))}`;
}

/** The headers that sign a delivery of `body` as event `id` at `timestamp` (seconds). */
export async function signedHeaders(
  key: Uint8Array<ArrayBuffer>,
  id: string,
  timestamp: number,
  body: string,
): Promise<Record<string, string>> {
  return {
    "webhook-id": id,
    "webhook-timestamp": String(timestamp),
    "webhook-signature": await webhookSignature(key, id, timestamp, body),
  };
}
