import { AwsV4Signer } from "aws4fetch";
import { RegistryError } from "../oci/errors";

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
export interface RedirectSettings {
  minBytes: number;
  ttlSeconds: number;
  /** R2's S3 API endpoint, `https://<account id>.r2.cloudflarestorage.com`. */
  endpoint: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
}

const DEFAULT_TTL_SECONDS = 300;
/** SigV4 presigned URLs live at most a week. */
const MAX_TTL_SECONDS = 7 * 24 * 60 * 60;

/** The redirect settings, or null when redirects are off; a partial configuration is a 500 naming what is missing. */
export function redirectSettings(env: Env): RedirectSettings | null {
  const minBytes = Number(env.BLOB_REDIRECT_MIN_BYTES);
  if (env.BLOB_REDIRECT_MIN_BYTES === undefined || env.BLOB_REDIRECT_MIN_BYTES.trim() === "" || minBytes === 0) {
    return null;
  }
  const required = {
    R2_ENDPOINT: env.R2_ENDPOINT,
    R2_BUCKET_NAME: env.R2_BUCKET_NAME,
    R2_ACCESS_KEY_ID: env.R2_ACCESS_KEY_ID,
    R2_SECRET_ACCESS_KEY: env.R2_SECRET_ACCESS_KEY,
  };
  const missing = Object.entries(required)
    .filter(([, value]) => value === undefined || value.trim() === "")
    .map(([name]) => name);
  if (!Number.isSafeInteger(minBytes) || minBytes < 0) missing.unshift("BLOB_REDIRECT_MIN_BYTES (a number of bytes)");
  if (missing.length > 0) {
    throw new RegistryError(
      "UNKNOWN",
      `blob redirects are on (BLOB_REDIRECT_MIN_BYTES) but need ${missing.join(", ")}`,
    );
  }
  const ttl = Number(env.BLOB_REDIRECT_TTL_SECONDS);
  return {
    minBytes,
    ttlSeconds: Number.isSafeInteger(ttl) && ttl > 0 ? Math.min(ttl, MAX_TTL_SECONDS) : DEFAULT_TTL_SECONDS,
    endpoint: (required.R2_ENDPOINT ?? "").replace(/\/+$/, ""),
    bucket: required.R2_BUCKET_NAME ?? "",
    accessKeyId: required.R2_ACCESS_KEY_ID ?? "",
    secretAccessKey: required.R2_SECRET_ACCESS_KEY ?? "",
  };
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
