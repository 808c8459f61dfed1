import { AwsV4Signer } from "aws4fetch";
import { settingsOf, type BlobRedirectSettings } from "../settings/settings";

/**
 * Optional redirects for large blobs: a GET of a blob of at least BLOB_REDIRECT_MIN_BYTES
 * is answered, after the client's authorization and the repository's link were checked,
 * with `307` to a presigned URL of the blob's object on R2's S3 API, valid for
 * BLOB_REDIRECT_TTL_SECONDS, so the bytes go from R2 to the client without passing
 * through the Worker (distribution's storage `redirect`). Off unless
 * BLOB_REDIRECT_MIN_BYTES is set; then the R2 S3 API settings must be set too
 * (docs/configuration.md). The signature is SigV4 query signing by aws4fetch (a SigV4
 * library made for Workers), checked against botocore's in test/e2e.
 */
export type RedirectSettings = BlobRedirectSettings;

/** The redirect settings, or null when redirects are off (a partial configuration is a 500 naming what is missing). */
export function redirectSettings(env: Env): RedirectSettings | null {
  return settingsOf(env).blobRedirect;
}

/** A presigned GET URL for the R2 object `key`, valid `settings.ttlSeconds` from `now`. */
export async function presignedUrl(settings: RedirectSettings, key: string, now = new Date()): Promise<string> {
  const path = key.split("/").map(encodeURIComponent).join("/");
  const url = new URL(`${settings.endpoint}/${encodeURIComponent(settings.bucket)}/${path}`);
  url.searchParams.set("X-Amz-Expires", String(settings.ttlSeconds));
  const signer = new AwsV4Signer({
    method: "GET",
    url: url.toString(),
    accessKeyId: settings.accessKeyId,
    secretAccessKey: settings.secretAccessKey,
    service: "s3",
    region: "auto",
    signQuery: true,
    datetime: now.toISOString().replace(/[:-]|\.\d{3}/g, ""),
  });
  const signed = await signer.sign();
  return signed.url.toString();
}
