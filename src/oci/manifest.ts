import { parseDigest, type Digest } from "./digest";
import { RegistryError } from "./errors";
import { essence, manifestKind, MediaTypes, Schema1MediaTypes, type ManifestKind } from "./media-types";

/** Largest manifest accepted, as the spec suggests (4 MiB); larger is 413. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/** An OCI content descriptor as it appears inside a manifest. */
export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
  /** Foreign layers (Docker's non-distributable layers) are fetched from these, not from us. */
  urls?: string[];
  /** An index child's platform (`linux/arm64/v8`), when it names one (shown, never checked). */
  platform?: string;
}

/** What the registry needs to know of a manifest to store and check it. */
export interface ParsedManifest {
  kind: ManifestKind;
  mediaType: string;
  /** Blobs (config and layers) this repository must link before the manifest is accepted. */
  blobs: Descriptor[];
  /** Child manifests (of an index) this repository must hold. */
  manifests: Descriptor[];
  subject?: Descriptor;
  artifactType?: string;
  annotations?: Record<string, string>;
  config?: Descriptor;
}

function invalid(reason: string): RegistryError {
  return new RegistryError("MANIFEST_INVALID", "manifest invalid", { reason });
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function parseAnnotations(value: unknown, where: string): Record<string, string> | undefined {
  if (value === undefined) return undefined;
  if (!isRecord(value) || !Object.values(value).every((v) => typeof v === "string")) {
    throw invalid(`${where}.annotations must be a map of strings`);
  }
  return value as Record<string, string>;
}

function parseDescriptor(value: unknown, where: string): Descriptor {
  if (!isRecord(value)) throw invalid(`${where} must be a descriptor object`);
  const { mediaType, digest, size, artifactType, urls } = value;
  if (typeof mediaType !== "string" || mediaType.length === 0) throw invalid(`${where}.mediaType must be a string`);
  if (typeof digest !== "string") throw invalid(`${where}.digest must be a string`);
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
    throw invalid(`${where}.size must be a non-negative integer`);
  }
  let parsedDigest: Digest;
  try {
    parsedDigest = parseDigest(digest);
  } catch {
    throw invalid(`${where}.digest is not a valid digest`);
  }
  const descriptor: Descriptor = { mediaType, digest: parsedDigest, size };
  if (artifactType !== undefined) {
    if (typeof artifactType !== "string") throw invalid(`${where}.artifactType must be a string`);
    descriptor.artifactType = artifactType;
  }
  if (urls !== undefined) {
    if (!Array.isArray(urls) || !urls.every((u) => typeof u === "string"))
      throw invalid(`${where}.urls must be strings`);
    descriptor.urls = urls as string[];
  }
  const annotations = parseAnnotations(value.annotations, where);
  if (annotations) descriptor.annotations = annotations;
  const platform = platformOf(value.platform);
  if (platform) descriptor.platform = platform;
  return descriptor;
}

/** `os/architecture[/variant]` of a descriptor's platform, or undefined for anything else. */
function platformOf(value: unknown): string | undefined {
  if (!isRecord(value)) return undefined;
  const { os, architecture, variant } = value;
  if (typeof os !== "string" || typeof architecture !== "string") return undefined;
  return [os, architecture, ...(typeof variant === "string" && variant !== "" ? [variant] : [])].join("/");
}

function parseDescriptorList(value: unknown, where: string): Descriptor[] {
  if (!Array.isArray(value)) throw invalid(`${where} must be an array`);
  return value.map((item, index) => parseDescriptor(item, `${where}[${index}]`));
}

/**
 * Decides the manifest's media type from the request's Content-Type and the body's
 * own `mediaType` field. They must agree when both are given; a generic or missing
 * Content-Type defers to the body, and a body without one is recognised by shape.
 */
function resolveMediaType(contentType: string, body: Record<string, unknown>): string {
  const declared = body.mediaType;
  if (declared !== undefined && typeof declared !== "string") throw invalid("mediaType must be a string");
  const header = essence(contentType);
  const headerIsSpecific = header !== "" && header !== "application/json" && header !== "application/octet-stream";
  if (
    Schema1MediaTypes.has(header) ||
    (declared !== undefined && Schema1MediaTypes.has(declared)) ||
    body.schemaVersion === 1
  ) {
    throw new RegistryError("MANIFEST_INVALID", "Docker schema 1 manifests are not supported; push schema 2 or OCI", {
      reason: "schema1 unsupported",
    });
  }
  if (headerIsSpecific && declared !== undefined && declared !== header) {
    throw invalid(`Content-Type ${header} does not match the manifest's mediaType ${declared}`);
  }
  if (headerIsSpecific) return header;
  if (declared !== undefined) return declared;
  if ("manifests" in body) return MediaTypes.ociIndex;
  if ("config" in body || "layers" in body) return MediaTypes.ociManifest;
  throw invalid("cannot tell the manifest's media type: no Content-Type and no mediaType field");
}

/** Parses and checks a manifest's bytes. Pure: knows nothing of what is stored. */
export function parseManifest(bytes: Uint8Array, contentType: string): ParsedManifest {
  let body: unknown;
  try {
    body = JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(bytes));
  } catch {
    throw invalid("manifest is not valid UTF-8 JSON");
  }
  if (!isRecord(body)) throw invalid("manifest must be a JSON object");
  const mediaType = resolveMediaType(contentType, body);
  const kind = manifestKind(mediaType);
  if (!kind) throw invalid(`unsupported manifest media type ${mediaType}`);
  if (body.schemaVersion !== 2) throw invalid("schemaVersion must be 2");

  const parsed: ParsedManifest = { kind, mediaType, blobs: [], manifests: [] };
  if (kind === "image") {
    const config = parseDescriptor(body.config, "config");
    parsed.config = config;
    parsed.blobs = [config, ...parseDescriptorList(body.layers ?? [], "layers")];
    if (mediaType === MediaTypes.dockerManifest && body.layers === undefined) throw invalid("layers is required");
  } else {
    parsed.manifests = parseDescriptorList(body.manifests, "manifests");
  }
  if (body.subject !== undefined) parsed.subject = parseDescriptor(body.subject, "subject");
  if (body.artifactType !== undefined) {
    if (typeof body.artifactType !== "string") throw invalid("artifactType must be a string");
    parsed.artifactType = body.artifactType;
  }
  const annotations = parseAnnotations(body.annotations, "manifest");
  if (annotations) parsed.annotations = annotations;
  return parsed;
}

/** parseManifest, or null when the bytes are not a manifest this registry serves (reading what is stored). */
export function parseManifestOrNull(bytes: Uint8Array, contentType = ""): ParsedManifest | null {
  try {
    return parseManifest(bytes, contentType);
  } catch {
    return null;
  }
}
