/** Manifest media types this registry stores and serves. */
export const MediaTypes = {
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerManifestList: "application/vnd.docker.distribution.manifest.list.v2+json",
} as const;

/** Docker schema 1, which this registry refuses (it is signed per host and long deprecated). */
export const Schema1MediaTypes = new Set([
  "application/vnd.docker.distribution.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.v1+prettyjws",
]);

export type ManifestKind = "image" | "index";

const KINDS: Record<string, ManifestKind> = {
  [MediaTypes.ociManifest]: "image",
  [MediaTypes.dockerManifest]: "image",
  [MediaTypes.ociIndex]: "index",
  [MediaTypes.dockerManifestList]: "index",
};

export function manifestKind(mediaType: string): ManifestKind | undefined {
  return KINDS[mediaType];
}

/** The media type part of a Content-Type header, without parameters, lowercased. */
export function essence(contentType: string | null | undefined): string {
  if (!contentType) return "";
  return (contentType.split(";")[0] ?? "").trim().toLowerCase();
}
