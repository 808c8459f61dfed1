import type { Digest } from "../oci/digest";
import type { ParsedManifest } from "../oci/manifest";
import { Paths } from "./paths";
import { listNames } from "./tags";

/** A referrer as the referrers API lists it (an OCI descriptor). */
export interface ReferrerDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
}

/** How many referrer records are read from R2 at once. */
const READ_CONCURRENCY = 32;

/**
 * The referrers index of a repository: which manifests name a given digest as their
 * `subject`. Written when such a manifest is pushed (the subject need not exist yet),
 * removed when it is deleted. R2 records under one prefix per subject, so a listing is
 * sorted and pages with `startAfter`.
 */
export class Referrers {
  constructor(
    private readonly bucket: R2Bucket,
    readonly name: string,
  ) {}

  /** The descriptor the referrers API shows for a manifest, per the spec's artifactType rule. */
  static describe(manifest: ParsedManifest, digest: Digest, size: number): ReferrerDescriptor {
    const descriptor: ReferrerDescriptor = { mediaType: manifest.mediaType, digest: digest.value, size };
    const artifactType = manifest.artifactType ?? (manifest.kind === "image" ? manifest.config?.mediaType : undefined);
    if (artifactType) descriptor.artifactType = artifactType;
    if (manifest.annotations) descriptor.annotations = manifest.annotations;
    return descriptor;
  }

  async add(subject: Digest, referrer: Digest, descriptor: ReferrerDescriptor): Promise<void> {
    await this.bucket.put(Paths.referrer(this.name, subject, referrer), JSON.stringify(descriptor));
  }

  async remove(subject: Digest, referrer: Digest): Promise<void> {
    await this.bucket.delete(Paths.referrer(this.name, subject, referrer));
  }

  /**
   * Referrers of `subject` in digest order, at most `limit`, after the referrer digest
   * `last`. Each entry keeps its listing key (for pagination); a record deleted between
   * list and read comes back with no descriptor.
   */
  async list(
    subject: Digest,
    limit: number,
    last?: string,
  ): Promise<{ key: string; descriptor: ReferrerDescriptor | null }[]> {
    const prefix = Paths.referrerPrefix(this.name, subject);
    const keys = await listNames(this.bucket, prefix, limit, last);
    const entries: { key: string; descriptor: ReferrerDescriptor | null }[] = [];
    for (let index = 0; index < keys.length; index += READ_CONCURRENCY) {
      const batch = keys.slice(index, index + READ_CONCURRENCY);
      const records = await Promise.all(batch.map((key) => this.bucket.get(prefix + key)));
      for (const [offset, record] of records.entries()) {
        const key = batch[offset] ?? "";
        entries.push({ key, descriptor: record ? ((await record.json()) as ReferrerDescriptor) : null });
      }
    }
    return entries;
  }
}
