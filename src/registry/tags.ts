import { parseDigest, type Digest } from "../oci/digest";
import { EdgeCache } from "./edge-cache";
import { Paths } from "./paths";

/** R2 returns at most 1000 keys per list call. */
const R2_LIST_MAX = 1000;

/**
 * A repository's tags. Tags are mutable, so they are read from R2 (strongly
 * consistent everywhere): a client that moved a tag sees the move on its next pull from
 * any location. With EDGE_TAG_TTL_SECONDS set, pulls (`resolveAtEdge`) may instead use
 * the digest this location's cache kept for that long (EdgeCache), and a tag moved or
 * deleted elsewhere may resolve to its old digest here until then; never KV, whose
 * copies of a value that changes could lag without bound when a write is dropped.
 */
export class Tags {
  constructor(
    private readonly bucket: R2Bucket,
    readonly name: string,
    private readonly edge: EdgeCache = EdgeCache.bypass(),
  ) {}

  async resolve(tag: string): Promise<Digest | null> {
    const object = await this.bucket.get(Paths.tag(this.name, tag));
    if (!object) return null;
    return parseDigest((await object.text()).trim());
  }

  /** The tag as a pull sees it: this location's cached digest within the tag TTL, else R2. */
  async resolveAtEdge(tag: string): Promise<Digest | null> {
    const cached = await this.edge.matchTag(this.name, tag);
    if (cached !== null) {
      try {
        return parseDigest(cached);
      } catch {
        // Not a digest: whatever it is, R2 decides.
      }
    }
    const digest = await this.resolve(tag);
    if (digest) void this.edge.putTag(this.name, tag, digest.value);
    return digest;
  }

  async set(tag: string, digest: Digest): Promise<void> {
    await this.bucket.put(Paths.tag(this.name, tag), digest.value);
    await this.edge.forgetTag(this.name, tag);
  }

  async delete(tag: string): Promise<boolean> {
    const key = Paths.tag(this.name, tag);
    if (!(await this.bucket.head(key))) return false;
    await this.bucket.delete(key);
    await this.edge.forgetTag(this.name, tag);
    return true;
  }

  /** Every tag that points at `digest` (reads each tag record; used by DELETE by digest). */
  async pointingAt(digest: Digest): Promise<string[]> {
    const matches: string[] = [];
    let last: string | undefined;
    for (;;) {
      const page = await this.list(R2_LIST_MAX, last);
      const targets = await Promise.all(page.map((tag) => this.resolve(tag)));
      page.forEach((tag, index) => {
        if (targets[index]?.value === digest.value) matches.push(tag);
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
