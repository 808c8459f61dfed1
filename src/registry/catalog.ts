import { Paths } from "./paths";
import { listNames } from "./tags";

/**
 * The list of repositories: one empty R2 marker per repository, written when the
 * repository first links anything, so listing the catalog reads one sorted prefix
 * (R2 `startAfter` + `limit`) and never scans blobs, however many there are.
 */
export class Catalog {
  constructor(private readonly bucket: R2Bucket) {}

  async exists(name: string): Promise<boolean> {
    return (await this.bucket.head(Paths.catalogEntry(name))) !== null;
  }

  /** Lists a repository. A head first: a read is cheaper than a write, and most links are to known repositories. */
  async add(name: string): Promise<void> {
    if (!(await this.exists(name))) await this.bucket.put(Paths.catalogEntry(name), "");
  }

  async list(limit: number, last?: string): Promise<string[]> {
    return listNames(this.bucket, Paths.catalogPrefix, limit, last);
  }
}
