import { createExecutionContext, env, SELF } from "cloudflare:test";
import worker from "../../src/index";
import { expect } from "vitest";

export const MiB = 1024 * 1024;
/** UPLOAD_PART_SIZE in wrangler.toml: the R2 multipart part size the tests run with. */
export const PART_SIZE = Number(env.UPLOAD_PART_SIZE);

/** Any host works: the Worker only looks at the path. */
export const BASE = "http://registry.test";

export const MediaTypes = {
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayer: "application/vnd.oci.image.layer.v1.tar+gzip",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerManifestList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerLayer: "application/vnd.docker.image.rootfs.diff.tar.gzip",
} as const;

/** A request to the registry Worker; `path` is absolute (`/v2/...`) or a Location header. */
export async function registry(path: string, init?: RequestInit): Promise<Response> {
  if (!transport.direct) return SELF.fetch(new URL(path, BASE).toString(), init);
  return worker.fetch(new Request(new URL(path, BASE), init), env, createExecutionContext());
}

/**
 * `direct`: requests go to the Worker's fetch handler in this isolate instead of through
 * SELF.fetch. In @cloudflare/vitest-pool-workers 0.15 every SELF.fetch makes the next
 * ones slower (GET /v2/ took 4 ms after 100 requests and 200 ms after 900 in one test
 * file; the Worker `npm start` serves stays flat at ~1.5 ms), which a test making
 * thousands of requests cannot afford. SELF.fetch stays the default: it also checks
 * what a real request carries (a Content-Length that disagrees with the body).
 */
export const transport = { direct: false };

export function utf8(text: string): Uint8Array<ArrayBuffer> {
  return new Uint8Array(new TextEncoder().encode(text));
}

function hex(buffer: ArrayBuffer): string {
  return [...new Uint8Array(buffer)].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** `sha256:<hex>` of bytes in memory. */
export async function sha256(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  return `sha256:${hex(await crypto.subtle.digest("SHA-256", bytes))}`;
}

/** `sha512:<hex>` of bytes in memory. */
export async function sha512(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  return `sha512:${hex(await crypto.subtle.digest("SHA-512", bytes))}`;
}

/** `sha256:<hex>` and length of a stream (a response body), without holding it in memory. */
export async function digestStream(stream: ReadableStream<Uint8Array>): Promise<{ digest: string; size: number }> {
  const digester = new crypto.DigestStream("SHA-256");
  // A body that fails rejects this too; the pipe's own rejection is what callers see.
  void digester.digest.catch(() => undefined);
  let size = 0;
  const counter = new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, controller) {
      size += chunk.byteLength;
      controller.enqueue(chunk);
    },
  });
  await stream.pipeThrough(counter).pipeTo(digester);
  return { digest: `sha256:${hex(await digester.digest)}`, size };
}

/**
 * GET of a blob answers 200 with exactly `size` bytes hashing to `digest` (compared by
 * digest: a failed comparison of MiBs would print them all).
 */
export async function expectBlobReads(name: string, digest: string, size: number): Promise<void> {
  const response = await registry(`/v2/${name}/blobs/${digest}`);
  expect(response.status).toBe(200);
  const body = response.body;
  if (!body) throw new Error("blob response has no body");
  expect(await digestStream(body)).toEqual({ digest, size });
}

/** Random bytes of any size (crypto.getRandomValues fills at most 64 KiB per call). */
export function randomBytes(size: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(size);
  const piece = 64 * 1024;
  for (let offset = 0; offset < size; offset += piece) {
    crypto.getRandomValues(bytes.subarray(offset, Math.min(size, offset + piece)));
  }
  return bytes;
}

export function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const total = parts.reduce((sum, part) => sum + part.byteLength, 0);
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    bytes.set(part, offset);
    offset += part.byteLength;
  }
  return bytes;
}

/** A body of unknown length: the Worker sees no Content-Length (like docker's streamed PATCH). */
export function streamOf(...chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  let index = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      const chunk = chunks[index++];
      if (chunk === undefined) controller.close();
      else controller.enqueue(chunk.slice());
    },
  });
}

/** Asserts the response is an OCI error with this status and (first) code. */
export async function expectError(response: Response, status: number, code?: string): Promise<void> {
  expect(response.status).toBe(status);
  const body: unknown = await response.json();
  expect(body).toMatchObject({ errors: [expect.objectContaining({ code: expect.any(String) })] });
  if (code !== undefined) expect(body).toMatchObject({ errors: [expect.objectContaining({ code })] });
}

/** Reads a header that must be present. */
export function header(response: Response, name: string): string {
  const value = response.headers.get(name);
  expect(value, `header ${name}`).not.toBeNull();
  return value ?? "";
}

/** Pushes a blob monolithically (POST ?digest=) and returns its digest. */
export async function pushBlob(name: string, bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = await sha256(bytes);
  const response = await registry(`/v2/${name}/blobs/uploads/?digest=${digest}`, { method: "POST", body: bytes });
  expect(response.status).toBe(201);
  return digest;
}

/** Starts an upload session and returns its Location and UUID. */
export async function startUpload(name: string): Promise<{ location: string; uuid: string }> {
  const response = await registry(`/v2/${name}/blobs/uploads/`, { method: "POST" });
  expect(response.status).toBe(202);
  return { location: header(response, "Location"), uuid: header(response, "Docker-Upload-UUID") };
}

/** Appends `location`'s query with `digest=`. */
export function withDigest(location: string, digest: string): string {
  const url = new URL(location, BASE);
  url.searchParams.set("digest", digest);
  return url.pathname + url.search;
}

export interface PushedManifest {
  digest: string;
  bytes: Uint8Array<ArrayBuffer>;
  mediaType: string;
  size: number;
}

/** PUTs a manifest (an object is serialised as JSON) and returns the response. */
export function putManifest(
  name: string,
  reference: string,
  manifest: object | Uint8Array<ArrayBuffer>,
  contentType: string,
): Promise<Response> {
  const body = manifest instanceof Uint8Array ? manifest : utf8(JSON.stringify(manifest));
  return registry(`/v2/${name}/manifests/${reference}`, {
    method: "PUT",
    headers: { "Content-Type": contentType },
    body,
  });
}

/** PUTs a manifest that must be accepted, and returns what a descriptor of it needs. */
export async function pushManifest(
  name: string,
  reference: string,
  manifest: object,
  contentType: string = MediaTypes.ociManifest,
): Promise<PushedManifest> {
  const bytes = utf8(JSON.stringify(manifest));
  const response = await putManifest(name, reference, bytes, contentType);
  expect(response.status).toBe(201);
  const digest = await sha256(bytes);
  expect(response.headers.get("Docker-Content-Digest")).toBe(digest);
  return { digest, bytes, mediaType: contentType, size: bytes.byteLength };
}

/** Pushes a config and one layer blob, and returns an OCI image manifest referencing them. */
export async function imageManifest(
  name: string,
  options: {
    seed?: string;
    mediaType?: string;
    configType?: string;
    layerType?: string;
    layer?: Uint8Array<ArrayBuffer>;
  } = {},
): Promise<Record<string, unknown>> {
  const seed = options.seed ?? crypto.randomUUID();
  const config = utf8(JSON.stringify({ architecture: "amd64", os: "linux", seed }));
  const layer = options.layer ?? utf8(`layer bytes for ${seed}`);
  const configDigest = await pushBlob(name, config);
  const layerDigest = await pushBlob(name, layer);
  return {
    schemaVersion: 2,
    mediaType: options.mediaType ?? MediaTypes.ociManifest,
    config: { mediaType: options.configType ?? MediaTypes.ociConfig, digest: configDigest, size: config.byteLength },
    layers: [{ mediaType: options.layerType ?? MediaTypes.ociLayer, digest: layerDigest, size: layer.byteLength }],
  };
}

/** Pushes an image manifest under `reference` (a tag or its digest) and returns it. */
export async function pushImage(name: string, reference?: string, seed?: string): Promise<PushedManifest> {
  const manifest = await imageManifest(name, seed === undefined ? {} : { seed });
  if (reference !== undefined) return pushManifest(name, reference, manifest);
  const digest = await sha256(utf8(JSON.stringify(manifest)));
  return pushManifest(name, digest, manifest);
}

/** A descriptor of a pushed manifest, for an index's `manifests` or a `subject`. */
export function descriptorOf(manifest: PushedManifest): { mediaType: string; digest: string; size: number } {
  return { mediaType: manifest.mediaType, digest: manifest.digest, size: manifest.size };
}

/** One request to the registry, the way a test sends it (its settings, its credentials). */
export type Send = (path: string, init?: RequestInit) => Promise<Response>;

/** Pushes `bytes` as a monolithic upload through `send`; returns the digest. */
export async function uploadWith(send: Send, name: string, bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = await sha256(bytes);
  const response = await send(`/v2/${name}/blobs/uploads/?digest=${digest}`, { method: "POST", body: bytes });
  expect(response.status).toBe(201);
  return digest;
}

/**
 * Pushes a one-layer image through `send` under `reference` (more tags with `?tag=`), its
 * config and layer made from `seed`; returns its digests, its size and the manifest PUT's answer.
 */
export async function pushImageWith(send: Send, name: string, reference: string, seed: string = crypto.randomUUID()) {
  const config = utf8(JSON.stringify({ architecture: "amd64", os: "linux", seed }));
  const layer = utf8(`layer ${seed}`);
  const configDigest = await uploadWith(send, name, config);
  const layerDigest = await uploadWith(send, name, layer);
  const bytes = utf8(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.ociManifest,
      config: { mediaType: MediaTypes.ociConfig, digest: configDigest, size: config.byteLength },
      layers: [{ mediaType: MediaTypes.ociLayer, digest: layerDigest, size: layer.byteLength }],
    }),
  );
  const put = await send(`/v2/${name}/manifests/${reference}`, {
    method: "PUT",
    headers: { "Content-Type": MediaTypes.ociManifest },
    body: bytes,
  });
  expect(put.status).toBe(201);
  return { digest: await sha256(bytes), configDigest, layerDigest, size: bytes.byteLength, put };
}
