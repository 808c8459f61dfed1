import type { Digest } from "../oci/digest";
import { RegistryError, unavailable } from "../oci/errors";
import type { PutManifestResult, Reference, StoredManifest } from "../registry/manifests";
import { SYSTEM_CONTEXT, type ChangeContext, type ChangeSeam } from "../registry/changes";
import { EdgeCache } from "../registry/edge-cache";
import { changeSeamOf, repositoryParts, type RepositoryResolver, type ResolveOptions } from "../registry/registry";
import {
  Repository,
  type BlobRequest,
  type LocatedBlob,
  type PullRequest,
  type RepositoryParts,
} from "../registry/repository";
import type { TagRecord } from "../registry/tags";
import { settingsOf } from "../settings/settings";
import { mirroredName, upstreamOfNs, type MirroredName } from "../settings/upstreams";
import { Mirror } from "./mirror";

/**
 * A mirrored repository (docs/architecture.md, "Mirroring"): the repository a mirrored
 * name is stored as, decorated so that its reads fetch what is missing from the upstream
 * and store it through the same repository API a push uses (Mirror), and so that nothing
 * else may be written to it. The routes see a Repository and know nothing of the mirror,
 * as distribution's proxy wraps its repository.
 */
export class MirroredRepository extends Repository {
  constructor(
    parts: RepositoryParts,
    seam: ChangeSeam,
    context: ChangeContext,
    private readonly mirror: Mirror,
    /** The name the client asked for (`library/alpine`), which upstream answers are named by. */
    private readonly requestedName: string,
  ) {
    super(mirror.name.local, parts, seam, context);
  }

  override readOnlyReason(): string {
    return `${this.requestedName} is mirrored from ${this.mirror.name.upstream.prefix}: it is read-only here`;
  }

  /** Listed by the upstream, whether or not anything of it is stored yet. */
  override exists(): Promise<boolean> {
    return Promise.resolve(true);
  }

  /** The record to serve a manifest from, once the mirror made sure it is stored and fresh. */
  private async fresh(reference: Reference, resolved?: TagRecord): Promise<TagRecord | undefined> {
    return resolved ?? (await this.upstreamWork(() => this.mirror.manifest(reference)));
  }

  override async statManifest(
    reference: Reference,
    resolved?: TagRecord,
  ): Promise<{ digest: Digest; mediaType: string; size: number }> {
    return super.statManifest(reference, await this.fresh(reference, resolved));
  }

  override async getManifest(reference: Reference, resolved?: TagRecord, pull?: PullRequest): Promise<StoredManifest> {
    return super.getManifest(reference, await this.fresh(reference, resolved), pull);
  }

  /**
   * Linked here: served as stored. Otherwise fetched: linked when stored already and the
   * upstream proved it has it, or streamed from the upstream (and stored on the way).
   */
  protected override async findBlob(digest: Digest, request: BlobRequest): Promise<LocatedBlob> {
    try {
      return { descriptor: await this.statBlob(digest) };
    } catch (error) {
      if (!(error instanceof RegistryError && error.code === "BLOB_UNKNOWN")) throw error;
    }
    const fetched = await this.upstreamWork(() => this.mirror.blob(digest, request.method, request.waitUntil));
    return "descriptor" in fetched ? fetched : { passThrough: fetched };
  }

  /** The upstream's tag list; what is stored when the upstream cannot answer. */
  override async listTagsPage(
    n: number | undefined,
    last: string | undefined,
  ): Promise<{ tags: string[]; next?: string }> {
    const answer = await this.upstreamWork(() => this.mirror.tags(n, last, this.requestedName));
    return answer ?? super.listTagsPage(n, last);
  }

  private refuse(): never {
    throw new RegistryError("DENIED", this.readOnlyReason(), {
      name: this.requestedName,
      upstream: this.mirror.name.upstream.prefix,
    });
  }

  override putManifest(): Promise<PutManifestResult> {
    this.refuse();
  }

  override deleteManifest(): Promise<void> {
    this.refuse();
  }

  override unlinkBlob(): Promise<void> {
    this.refuse();
  }

  override mountBlob(): Promise<null> {
    this.refuse();
  }

  /**
   * Work that talks to an upstream: whatever an upstream can make go wrong that no check
   * foresaw is the upstream failing (503, logged), never a 500. The error names the
   * mirror's prefix only: what went wrong may name internal addresses, and goes to the log.
   */
  private async upstreamWork<T>(work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (error) {
      if (error instanceof RegistryError) throw error;
      const { local, upstream } = this.mirror.name;
      console.error(`mirror ${local}: unexpected failure`, error);
      throw unavailable(`the answer of the upstream registry of ${upstream.prefix} could not be used; retry`, {
        upstream: upstream.prefix,
      });
    }
  }
}

/**
 * Which repository serves a requested name when upstreams are mirrored
 * (settings/upstreams.ts `mirroredName`): a mirrored one for a name an upstream serves,
 * null for this registry's own. containerd's `?ns=<registry>` naming a registry that is
 * not mirrored is NAME_UNKNOWN: never this registry's own repository, nor the default
 * upstream's, by that name (another registry's image would be substituted); containerd
 * then goes on to the next host.
 */
export const mirrorResolver: RepositoryResolver = {
  resolve(env: Env, name: string, options: ResolveOptions): Repository | null {
    const mirrors = settingsOf(env).mirrors;
    if (mirrors.upstreams.length === 0) return null;
    const { ns } = options;
    if (ns && ns !== options.host && !upstreamOfNs(mirrors, ns)) {
      throw new RegistryError("NAME_UNKNOWN", `this registry does not mirror ${ns}`, { ns });
    }
    const mirrored: MirroredName | null = mirroredName(mirrors, name, ns);
    if (!mirrored) return null;
    const edge = options.edge ?? EdgeCache.bypass();
    const context = options.context ?? SYSTEM_CONTEXT;
    return new MirroredRepository(
      repositoryParts(env, mirrored.local, edge),
      changeSeamOf(env),
      context,
      new Mirror(env, mirrored, edge, context),
      name,
    );
  },
};
