import type { Digest } from "../oci/digest";
import { parseManifest, parseManifestOrNull, type Descriptor, type ParsedManifest } from "../oci/manifest";
import {
  decodeContent,
  pullRecordsOf,
  type Catalog,
  type PullRecord,
  type ReferrerDescriptor,
  type Repository,
  type TagRow,
  type TagSummary,
} from "../registry/registry";
import { settingsOf } from "../settings/settings";

/**
 * What the web pages show, read from the same storage the API serves (src/ui). Every
 * read is bounded: the catalog reads at most ten listing pages, a repository's tags at
 * most TAGS_SORTED_MAX (10 to 100 listing pages, as R2 pages them with metadata), an image
 * page two, and bodies read for display (a config) have a size cap.
 */

/** R2 returns at most 1000 keys per list call (100 when it includes their metadata). */
const LIST_PAGE = 1000;
/** Largest image config read to show its settings. */
const CONFIG_MAX_BYTES = 1024 * 1024;

/**
 * A page of the catalog: names after `last` that contain `filter` and that `visible`
 * allows, at most `limit`, reading at most `maxPages` R2 pages; `next` is where the next
 * page starts (undefined at the end).
 */
export async function catalogPage(
  catalog: Catalog,
  options: { filter: string; last?: string; limit: number; visible: (name: string) => boolean; maxPages?: number },
): Promise<{ names: string[]; next?: string; exhausted?: boolean }> {
  const names: string[] = [];
  let last = options.last;
  for (let page = 0; page < (options.maxPages ?? 10); page++) {
    const batch = await catalog.list(LIST_PAGE, last);
    for (const name of batch) {
      last = name;
      if (!name.includes(options.filter) || !options.visible(name)) continue;
      names.push(name);
      if (names.length === options.limit) return { names, next: name };
    }
    if (batch.length < LIST_PAGE) return { names };
  }
  // Out of reads before the page filled: go on after the last name shown, never after a
  // name the viewer may not see (a link must not reveal it). With none shown, a filter
  // that matches little in a huge catalog ends here.
  const shown = names.at(-1);
  return shown === undefined ? { names, exhausted: true } : { names, next: shown };
}

/** Most tags an image page names, and the listing pages it reads to find them. */
export const IMAGE_TAGS_SHOWN = 20;
export const IMAGE_TAG_PAGES = 2;

/** Fills in what rows written before tag summaries lack, from their records (one read each). */
export async function complete(repository: Repository, rows: TagRow[]): Promise<void> {
  await Promise.all(
    rows.map(async (row) => {
      if (row.summary && row.digest) return;
      const record = await repository.resolveTag(row.tag);
      if (!record) return;
      row.digest = record.digest.value;
      const bytes = record.content ? decodeContent(record.content) : null;
      const manifest = bytes ? parseManifestOrNull(bytes, record.mediaType ?? "") : null;
      if (manifest) row.summary = summaryOf(manifest);
    }),
  );
}

/** What the pull records say of the manifests a page shows, by digest; null: they cannot be read just now. */
export interface TagPulls {
  records: Map<string, PullRecord> | null;
}

/**
 * The pull records of the manifests `rows` name (one D1 query); undefined when pulls are
 * not recorded (PULL_RECORD_INTERVAL off). A failure is logged and shown, never the page's.
 */
export async function tagPulls(env: Env, name: string, rows: TagRow[]): Promise<TagPulls | undefined> {
  if (settingsOf(env).pullRecordIntervalSeconds === null) return undefined;
  try {
    return {
      records: await pullRecordsOf(env).of(
        name,
        rows.flatMap((row) => (row.digest ? [row.digest] : [])),
      ),
    };
  } catch (error) {
    console.error("pulls: the repository's pull records could not be read", name, String(error));
    return { records: null };
  }
}

function summaryOf(manifest: ParsedManifest): TagSummary {
  if (manifest.kind === "image") return { size: manifest.blobs.reduce((total, blob) => total + blob.size, 0) };
  return { platforms: manifest.manifests.flatMap((child) => (child.platform ? [child.platform] : [])) };
}

/** What an image's config says that people look for. */
export interface ImageConfig {
  os?: string;
  architecture?: string;
  variant?: string;
  created?: string;
  entrypoint?: string[];
  cmd?: string[];
  workingDir?: string;
  user?: string;
  env?: string[];
  labels?: Record<string, string>;
}

export interface ImageDetails {
  digest: Digest;
  mediaType: string;
  size: number;
  manifest: ParsedManifest;
  /** The manifest's JSON, for its raw view. */
  json: string;
  config?: ImageConfig;
  /** Referrers of this manifest, grouped by artifact type. */
  referrers: Map<string, ReferrerDescriptor[]>;
  /** Tags of this repository that name it (Repository.tagsNaming); `moreTags`: maybe others. */
  tags: string[];
  moreTags: boolean;
}

/** Most of a manifest's text shown on its page. */
const RAW_SHOWN_BYTES = 64 * 1024;

/** Most referrers shown for one manifest. */
const REFERRERS_SHOWN = 200;

export async function imageDetails(
  repository: Repository,
  digest: Digest,
  { tags, more }: { tags: string[]; more: boolean },
): Promise<ImageDetails> {
  const stored = await repository.getManifest({ digest });
  const manifest = parseManifest(stored.bytes, stored.mediaType);
  const details: ImageDetails = {
    digest,
    mediaType: stored.mediaType,
    size: stored.bytes.byteLength,
    manifest,
    // As stored (pretty-printing is quadratic in nesting depth: a hostile manifest could
    // make it huge, or overflow the stack), at most RAW_SHOWN_BYTES.
    json: new TextDecoder().decode(stored.bytes.subarray(0, RAW_SHOWN_BYTES)),
    referrers: new Map(),
    tags,
    moreTags: more,
  };
  const [config, referrers] = await Promise.all([
    manifest.config ? readConfig(repository, manifest.config) : Promise.resolve(undefined),
    repository.listReferrers(digest, REFERRERS_SHOWN),
  ]);
  if (config) details.config = config;
  for (const { descriptor } of referrers) {
    if (!descriptor) continue;
    const type = descriptor.artifactType ?? descriptor.mediaType;
    const group = details.referrers.get(type) ?? [];
    group.push(descriptor);
    details.referrers.set(type, group);
  }
  return details;
}

async function readConfig(repository: Repository, descriptor: Descriptor): Promise<ImageConfig | undefined> {
  if (descriptor.size > CONFIG_MAX_BYTES) return undefined;
  try {
    const stored = await repository.statBlob(descriptor.digest);
    // The stored size counts, not the declared one (a mirrored manifest's is not checked).
    if (stored.size > CONFIG_MAX_BYTES) return undefined;
    const bytes = await repository.readBlobBytes(stored);
    if (!bytes) return undefined;
    const value: unknown = JSON.parse(new TextDecoder().decode(bytes));
    if (typeof value !== "object" || value === null) return undefined;
    const record = value as Record<string, unknown>;
    const inner = (typeof record.config === "object" && record.config !== null ? record.config : {}) as Record<
      string,
      unknown
    >;
    const text = (field: unknown) => (typeof field === "string" ? field : undefined);
    const list = (field: unknown) =>
      Array.isArray(field) && field.every((item) => typeof item === "string") ? (field as string[]) : undefined;
    const labels =
      typeof inner.Labels === "object" && inner.Labels !== null
        ? Object.fromEntries(
            Object.entries(inner.Labels as Record<string, unknown>).filter(
              (entry): entry is [string, string] => typeof entry[1] === "string",
            ),
          )
        : undefined;
    const config: ImageConfig = {};
    const fields: [keyof ImageConfig, unknown][] = [
      ["os", text(record.os)],
      ["architecture", text(record.architecture)],
      ["variant", text(record.variant)],
      ["created", text(record.created)],
      ["entrypoint", list(inner.Entrypoint)],
      ["cmd", list(inner.Cmd)],
      ["workingDir", text(inner.WorkingDir)],
      ["user", text(inner.User)],
      ["env", list(inner.Env)],
      ["labels", labels],
    ];
    for (const [key, field] of fields) if (field !== undefined && field !== "") Object.assign(config, { [key]: field });
    return config;
  } catch {
    // Not linked here, gone, or not JSON: the page shows the manifest without it.
    return undefined;
  }
}
