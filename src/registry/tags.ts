import { digestOrNull, parseDigest, type Digest } from "../oci/digest";
import { EdgeCache } from "./edge-cache";
import { Paths } from "./paths";

/** R2 returns at most 1000 keys per list call. */
const R2_LIST_MAX = 1000;

/**
 * What a tag record holds: the digest it points at and, since tags are written with
 * them, the manifest's media type and size, so a HEAD by tag is answered from the tag
 * alone. (Records written before hold the digest only.)
 */
export interface TagRecord {
  digest: Digest;
  mediaType?: string;
  size?: number;
  /** The manifest's bytes (base64), when small (EMBEDDED_CONTENT_MAX_BYTES): a GET by tag is then one read. */
  content?: string;
  /** Mirrored names (src/mirror): when the upstream last confirmed the tag (ms since the epoch). */
  checkedAt?: number;
  /** What the web pages list (src/ui): the image's total size, an index's platforms. */
  summary?: TagSummary;
}

/**
 * What a listing of tags shows without reading any manifest, kept in the tag object's
 * custom metadata: an image's total size (config and layers), an index's platforms.
 */
export interface TagSummary {
  size?: number;
  platforms?: string[];
}

/**
 * A summary must never make a tag's write fail (R2 refuses custom metadata over 8 KiB):
 * at most 32 platforms of at most 64 characters, 1 KiB in all; names that cannot be listed
 * (a `,` in them) are left out.
 */
const SUMMARY_PLATFORMS_MAX = 32;
const SUMMARY_PLATFORM_CHARS = 64;
const SUMMARY_PLATFORMS_BYTES = 1024;

function platformsText(platforms: string[]): string {
  let text = "";
  for (const platform of platforms.slice(0, SUMMARY_PLATFORMS_MAX)) {
    if (platform.includes(",") || platform.length > SUMMARY_PLATFORM_CHARS) continue;
    const next = text === "" ? platform : `${text},${platform}`;
    if (new TextEncoder().encode(next).byteLength > SUMMARY_PLATFORMS_BYTES) break;
    text = next;
  }
  return text;
}

/** The summary a tag object's custom metadata holds, or undefined (tags written before, or none). */
export function tagSummaryOf(metadata: Record<string, string> | undefined): TagSummary | undefined {
  if (!metadata) return undefined;
  const summary: TagSummary = {};
  const size = Number(metadata.size);
  if (metadata.size !== undefined && Number.isSafeInteger(size) && size >= 0) summary.size = size;
  if (metadata.platforms) summary.platforms = metadata.platforms.split(",").filter((platform) => platform !== "");
  return summary.size === undefined && summary.platforms === undefined ? undefined : summary;
}

/** Longest media type kept in a tag object's custom metadata (longer ones are read from the record). */
const MEDIA_TYPE_METADATA_MAX = 255;

/** A tag's digest, media type and manifest size from its object's custom metadata, or null when it lacks them. */
function statOf(metadata: Record<string, string> | undefined): TagRecord | null {
  if (metadata?.digest === undefined || metadata.mediaType === undefined || metadata.length === undefined) return null;
  const size = Number(metadata.length);
  const digest = digestOrNull(metadata.digest);
  if (!digest || !/^\d+$/.test(metadata.length) || !Number.isSafeInteger(size)) return null;
  return { digest, mediaType: metadata.mediaType, size };
}

/** A tag record's text: `{"digest","mediaType","size"}`, or (older records) the digest alone. Null if neither. */
export function parseTagRecord(text: string): TagRecord | null {
  const trimmed = text.trim();
  try {
    if (!trimmed.startsWith("{")) return { digest: parseDigest(trimmed) };
    const value = JSON.parse(trimmed) as {
      digest?: unknown;
      mediaType?: unknown;
      size?: unknown;
      content?: unknown;
      checkedAt?: unknown;
      summary?: unknown;
    };
    if (typeof value.digest !== "string") return null;
    const record: TagRecord = { digest: parseDigest(value.digest) };
    if (typeof value.mediaType === "string") record.mediaType = value.mediaType;
    if (typeof value.size === "number" && Number.isSafeInteger(value.size) && value.size >= 0) record.size = value.size;
    if (typeof value.content === "string") record.content = value.content;
    if (typeof value.checkedAt === "number" && Number.isFinite(value.checkedAt)) record.checkedAt = value.checkedAt;
    if (typeof value.summary === "object" && value.summary !== null) {
      const { size, platforms } = value.summary as { size?: unknown; platforms?: unknown };
      const summary: TagSummary = {};
      if (typeof size === "number" && Number.isSafeInteger(size) && size >= 0) summary.size = size;
      if (Array.isArray(platforms)) summary.platforms = platforms.filter((p): p is string => typeof p === "string");
      record.summary = summary;
    }
    return record;
  } catch {
    return null;
  }
}

/**
 * A tag object's custom metadata: the digest rides there too, so the garbage collector
 * learns every tag's target from a listing (no read per tag), and so does the summary,
 * for the web pages' tag lists.
 */
function tagMetadata(record: TagRecord): Record<string, string> {
  const metadata: Record<string, string> = { digest: record.digest.value };
  // And what a HEAD by tag answers with (statAtEdge), so it needs no body read.
  if (
    record.mediaType !== undefined &&
    record.mediaType.length <= MEDIA_TYPE_METADATA_MAX &&
    record.size !== undefined
  ) {
    metadata.mediaType = record.mediaType;
    metadata.length = String(record.size);
  }
  if (record.summary?.size !== undefined) metadata.size = String(record.summary.size);
  const platforms = platformsText(record.summary?.platforms ?? []);
  if (platforms !== "") metadata.platforms = platforms;
  return metadata;
}

function tagRecordText(record: TagRecord): string {
  return JSON.stringify({
    digest: record.digest.value,
    mediaType: record.mediaType,
    size: record.size,
    content: record.content,
    checkedAt: record.checkedAt,
    summary: record.summary,
  });
}

/**
 * A repository's tags. Tags are mutable, so they are read from R2 (strongly
 * consistent everywhere): a client that moved a tag sees the move on its next pull from
 * any location. With EDGE_TAG_TTL_SECONDS set, pulls (`resolveAtEdge`) may instead use
 * the record this location's cache kept for that long (EdgeCache), and a tag moved or
 * deleted elsewhere may resolve to its old digest here until then; never KV, whose
 * copies of a value that changes could lag without bound when a write is dropped.
 *
 * A tag names a manifest its repository holds: a manifest PUT writes its tags last and
 * a DELETE by digest removes them first (docs/architecture.md, "Storage faults"), so a
 * pull by tag needs no separate check of the revision link.
 */
export class Tags {
  constructor(
    private readonly bucket: R2Bucket,
    readonly name: string,
    private readonly edge: EdgeCache = EdgeCache.bypass(),
  ) {}

  async resolve(tag: string): Promise<TagRecord | null> {
    const object = await this.bucket.get(Paths.tag(this.name, tag));
    if (!object) return null;
    return parseTagRecord(await object.text());
  }

  /**
   * What a HEAD by tag needs (the digest, the manifest's media type and size) as a pull
   * sees it: one R2 head, from the tag object's custom metadata (written with the record
   * since it carries them), no body read; a tag written before, or one this location's
   * cache keeps (EDGE_TAG_TTL_SECONDS), as `resolveAtEdge` reads it.
   */
  async statAtEdge(tag: string): Promise<TagRecord | null> {
    if (this.edge.keepsTags) return this.resolveAtEdge(tag);
    const object = await this.bucket.head(Paths.tag(this.name, tag));
    if (!object) return null;
    return statOf(object.customMetadata) ?? this.resolve(tag);
  }

  /** The tag as a pull sees it: this location's cached record within the tag TTL, else R2. */
  async resolveAtEdge(tag: string): Promise<TagRecord | null> {
    const cached = await this.edge.matchTag(this.name, tag);
    const parsed = cached === null ? null : parseTagRecord(cached);
    if (parsed) return parsed;
    const record = await this.resolve(tag);
    if (record) void this.edge.putTag(this.name, tag, tagRecordText(record));
    return record;
  }

  async set(tag: string, record: TagRecord): Promise<void> {
    await this.bucket.put(Paths.tag(this.name, tag), tagRecordText(record), { customMetadata: tagMetadata(record) });
    await this.edge.forgetTag(this.name, tag);
  }

  /**
   * Sets `tag` only if it does not exist (R2's conditional put, `If-None-Match: *`): false
   * when it does, whatever it names. Two concurrent creates: exactly one succeeds.
   */
  async create(tag: string, record: TagRecord): Promise<boolean> {
    const written = await this.bucket.put(Paths.tag(this.name, tag), tagRecordText(record), {
      customMetadata: tagMetadata(record),
      onlyIf: { etagDoesNotMatch: "*" },
    });
    if (written === null) return false;
    await this.edge.forgetTag(this.name, tag);
    return true;
  }

  async delete(tag: string): Promise<boolean> {
    const key = Paths.tag(this.name, tag);
    if (!(await this.bucket.head(key))) return false;
    await this.bucket.delete(key);
    await this.edge.forgetTag(this.name, tag);
    return true;
  }

  /** When the tag was last written (R2 `uploaded`, ms), or null when there is none. One head. */
  async writtenAt(tag: string): Promise<number | null> {
    return (await this.bucket.head(Paths.tag(this.name, tag)))?.uploaded.getTime() ?? null;
  }

  /**
   * Removes the tag's record without reading it, and leaves the edge alone: the garbage
   * collector's removal, once it has found the tag unchanged (CollectorStore.removeTag).
   */
  async removeRecord(tag: string): Promise<void> {
    await this.bucket.delete(Paths.tag(this.name, tag));
  }

  /** Every tag that points at `digest` (reads each tag record; used by DELETE by digest). */
  async pointingAt(digest: Digest): Promise<string[]> {
    const matches: string[] = [];
    let last: string | undefined;
    for (;;) {
      const page = await this.list(R2_LIST_MAX, last);
      const targets = await Promise.all(page.map((tag) => this.resolve(tag)));
      page.forEach((tag, index) => {
        if (targets[index]?.digest.value === digest.value) matches.push(tag);
      });
      if (page.length < R2_LIST_MAX) return matches;
      last = page[page.length - 1];
    }
  }

  /**
   * Tags in lexical order, at most `limit`, starting after `last`. R2 lists keys in
   * byte order, which for the tag alphabet is the lexical order clients expect.
   */
  async list(limit: number, last?: string): Promise<string[]> {
    return listNames(this.bucket, Paths.tagPrefix(this.name), limit, last);
  }

  /**
   * The tag objects with their custom metadata, page by page, at most `maxPages` pages;
   * `truncated` on a page: more follow.
   */
  private async *listingPages(maxPages: number): AsyncGenerator<{ objects: R2Object[]; truncated: boolean }> {
    let cursor: string | undefined;
    for (let page = 0; page < maxPages; page++) {
      const listing = await this.bucket.list({
        prefix: Paths.tagPrefix(this.name),
        limit: R2_LIST_MAX,
        include: ["customMetadata"],
        ...(cursor ? { cursor } : {}),
      });
      yield { objects: listing.objects, truncated: listing.truncated };
      if (!listing.truncated) return;
      cursor = listing.cursor;
    }
  }

  /**
   * The tags, newest first (by when each was last written), from listings alone: each tag
   * object's custom metadata holds its digest and summary (tags written before summaries
   * existed have none). At most TAGS_SORTED_MAX are sorted (10 to 100 listing pages, as R2
   * pages them with metadata); beyond that, `truncated` and the first ones by name.
   */
  async listWithSummaries(): Promise<TagListing> {
    const prefix = Paths.tagPrefix(this.name);
    const rows: TagRow[] = [];
    for await (const page of this.listingPages(Number.MAX_SAFE_INTEGER)) {
      for (const object of page.objects) {
        const row: TagRow = {
          tag: object.key.slice(prefix.length),
          digest: object.customMetadata?.digest ?? "",
          pushedAt: object.uploaded,
        };
        const summary = tagSummaryOf(object.customMetadata);
        if (summary) row.summary = summary;
        rows.push(row);
      }
      if (page.truncated && rows.length >= TAGS_SORTED_MAX) return { rows, truncated: true };
    }
    rows.sort((a, b) => b.pushedAt.getTime() - a.pushedAt.getTime() || a.tag.localeCompare(b.tag));
    return { rows, truncated: false };
  }

  /**
   * Tags naming `digest`, from at most `maxPages` listings (an image page must not cost
   * what a repository's whole tag list does), at most `limit`; `more` when there may be others.
   */
  async naming(digest: string, limit: number, maxPages: number): Promise<{ tags: string[]; more: boolean }> {
    const prefix = Paths.tagPrefix(this.name);
    const tags: string[] = [];
    for await (const page of this.listingPages(maxPages)) {
      for (const object of page.objects) {
        if (object.customMetadata?.digest !== digest) continue;
        if (tags.length === limit) return { tags, more: true };
        tags.push(object.key.slice(prefix.length));
      }
      if (!page.truncated) return { tags, more: false };
    }
    return { tags, more: true };
  }
}

/** Most tags `listWithSummaries` sorts (10–100 list calls); beyond, the first ones by name. */
export const TAGS_SORTED_MAX = 10_000;

/** A tag as a listing shows it. */
export interface TagRow {
  tag: string;
  digest: string;
  /** When the tag was last written (pushed, or confirmed by a mirror's upstream). */
  pushedAt: Date;
  summary?: TagSummary;
}

export interface TagListing {
  rows: TagRow[];
  truncated: boolean;
}

/** Lists key suffixes under `prefix` in sorted order, paging R2 as needed. */
export async function listNames(bucket: R2Bucket, prefix: string, limit: number, last?: string): Promise<string[]> {
  const names: string[] = [];
  let cursor: string | undefined;
  while (names.length < limit) {
    const page = await bucket.list({
      prefix,
      limit: Math.min(R2_LIST_MAX, limit - names.length),
      ...(cursor ? { cursor } : last !== undefined ? { startAfter: prefix + last } : {}),
    });
    for (const object of page.objects) names.push(object.key.slice(prefix.length));
    if (!page.truncated) break;
    cursor = page.cursor;
  }
  return names;
}
