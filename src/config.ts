/** R2's multipart limits: every part but the last the same size, at least 5 MiB; at most 10 000 parts. */
export const MIN_PART_BYTES = 5 * 1024 * 1024;
export const MAX_PARTS = 10_000;

/** Settings read from the Worker's environment (wrangler.toml [vars]); see docs/configuration.md. */
export interface RegistryConfig {
  /** Seconds an unused upload session lives before its alarm purges it. */
  uploadTtlSeconds: number;
  /** Size of every R2 multipart part but the last; the memory one upload request holds. */
  uploadPartSize: number;
  /** Whether DELETE of manifests, tags and blobs is allowed (distribution's storage.delete.enabled). */
  deleteEnabled: boolean;
  /**
   * Whether `POST ?mount=<digest>` without `from` links any stored blob with that digest
   * (automatic content discovery). Off by default: it lets a repository claim a blob it
   * never uploaded by knowing its digest.
   */
  mountWithoutFrom: boolean;
  /**
   * Most descriptors (config, layers, index children) a manifest may list. Each distinct
   * one costs storage reads when the manifest is pushed; see docs/configuration.md.
   */
  manifestMaxReferences: number;
  /** Most tags one manifest PUT may set (the reference's and `?tag=`), each an `OCI-Tag` header. */
  manifestMaxTags: number;
  /**
   * How long a deleted repository link may stay visible at other locations: pull paths
   * read links from KV with this `cacheTtl` (KV's minimum, 60 s, applies). 0: links are
   * read from R2 on every pull (strong).
   */
  edgeLinkTtlSeconds: number;
  /** How long a tag may resolve to its old digest at other locations; 0 (default): tags read from R2. */
  edgeTagTtlSeconds: number;
  /** Largest blob the edge cache (Cache API) holds; larger ones stream from R2 on every pull. */
  edgeCacheMaxBytes: number;
  /** Whether the edge cache is used at all (it does nothing on workers.dev hosts either way). */
  edgeCacheEnabled: boolean;
  /**
   * The largest request body an upload may carry (MAX_CHUNK_LENGTH: the plan's limit when
   * deployed); undefined: no limit of our own.
   */
  maxChunkLength: number | undefined;
}

const DEFAULT_TTL_SECONDS = 7 * 24 * 60 * 60;
const DEFAULT_MANIFEST_MAX_REFERENCES = 1000;
const DEFAULT_MANIFEST_MAX_TAGS = 20;
const DEFAULT_EDGE_LINK_TTL_SECONDS = 60;
/** Under the Cache API's per-object limit on the Free, Pro and Business plans (512 MB). */
const DEFAULT_EDGE_CACHE_MAX_BYTES = 500_000_000;
const DEFAULT_PART_BYTES = 16 * 1024 * 1024;
/** Part buffers beyond this would not fit a 128 MB isolate next to the request. */
const MAX_PART_BYTES = 64 * 1024 * 1024;

function positiveInteger(text: string | undefined, fallback: number): number {
  const value = Number(text);
  return text !== undefined && Number.isSafeInteger(value) && value > 0 ? value : fallback;
}

function nonNegativeInteger(text: string | undefined, fallback: number): number {
  const value = Number(text);
  return text !== undefined && text.trim() !== "" && Number.isSafeInteger(value) && value >= 0 ? value : fallback;
}

export function readConfig(env: Env): RegistryConfig {
  const partSize = positiveInteger(env.UPLOAD_PART_SIZE, DEFAULT_PART_BYTES);
  return {
    uploadTtlSeconds: positiveInteger(env.UPLOAD_TTL_SECONDS, DEFAULT_TTL_SECONDS),
    uploadPartSize: Math.min(MAX_PART_BYTES, Math.max(MIN_PART_BYTES, partSize)),
    deleteEnabled: env.DELETE_ENABLED !== "false",
    mountWithoutFrom: env.MOUNT_WITHOUT_FROM === "true",
    manifestMaxReferences: positiveInteger(env.MANIFEST_MAX_REFERENCES, DEFAULT_MANIFEST_MAX_REFERENCES),
    manifestMaxTags: positiveInteger(env.MANIFEST_MAX_TAGS, DEFAULT_MANIFEST_MAX_TAGS),
    edgeLinkTtlSeconds: nonNegativeInteger(env.EDGE_LINK_TTL_SECONDS, DEFAULT_EDGE_LINK_TTL_SECONDS),
    edgeTagTtlSeconds: nonNegativeInteger(env.EDGE_TAG_TTL_SECONDS, 0),
    edgeCacheMaxBytes: nonNegativeInteger(env.EDGE_CACHE_MAX_BYTES, DEFAULT_EDGE_CACHE_MAX_BYTES),
    edgeCacheEnabled: env.EDGE_CACHE !== "off",
    maxChunkLength: positiveInteger(env.MAX_CHUNK_LENGTH, 0) || undefined,
  };
}
