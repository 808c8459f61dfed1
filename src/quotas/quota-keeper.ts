import { RegistryError, unavailable } from "../oci/errors";
import type {
  Change,
  ChangeAction,
  ChangeContext,
  ChangeListener,
  ChangePolicy,
  SeamExtension,
} from "../registry/changes";
import { metered } from "../registry/meter";
import { quotasOf, type Quota } from "../settings/quotas";
import { formatSize } from "../settings/values";
import { settingsOf, type Settings } from "../settings/settings";
import type { Claim, HoldKey } from "./usage-ledger";
import type { NamespaceUsage } from "./namespace-usage";

/**
 * Storage quotas on the repository seam (docs/architecture.md, "Storage quotas"): a policy
 * that reserves a push's bytes in each covering namespace's NamespaceUsage object before
 * anything is written (refusing with DENIED "quota exceeded" when they do not fit), gives
 * them back when the push is abandoned, and a listener that records the links once they
 * are written and drops them when they are removed. No route knows of it: app.ts
 * registers it (`quotaExtension`) and it builds nothing without QUOTAS.
 *
 * What a change costs a namespace:
 * - `blob.upload` (a commit of a known size, before its bytes are read): checked, nothing reserved;
 * - `blob.commit`, `blob.mount` (a layer link), `manifest.put` (a revision link): the blob's
 *   size, reserved, unless the namespace holds that blob already (free);
 * - `blob.unlink`, `manifest.delete`, `collect` of a layer link or a revision: the link's hold
 *   goes, and the blob's bytes with the namespace's last hold of it.
 * Pulls and deletes are never refused; the mirror's stores (actor `mirror`) are outside quotas.
 */

/** The changes the listener records. */
const TOLD: ReadonlySet<ChangeAction> = new Set([
  "blob.commit",
  "blob.mount",
  "manifest.put",
  "blob.unlink",
  "manifest.delete",
  "collect",
]);

/** The namespace's object. */
export function usageOf(env: Env, namespace: string): DurableObjectStub<NamespaceUsage> {
  return env.USAGE.get(env.USAGE.idFromName(namespace));
}

/** What a change asks of a quota: a link and its blob's size, and whether it is only a check. */
function claimOf(change: Change, context: ChangeContext): { claim: Claim; reserve: boolean } | null {
  if (context.actor.kind === "mirror") return null;
  switch (change.action) {
    case "blob.upload":
    case "blob.commit":
    case "blob.mount":
    case "manifest.put": {
      const { repository, size } = change;
      const kind = change.action === "manifest.put" ? "revision" : "layer";
      return {
        claim: { repository, kind, digest: change.digest.value, size },
        reserve: change.action !== "blob.upload",
      };
    }
    default:
      return null;
  }
}

/** The link a change removed, if any. */
function removedOf(change: Change): HoldKey | null {
  switch (change.action) {
    case "blob.unlink":
      return { repository: change.repository, kind: "layer", digest: change.digest.value };
    case "manifest.delete":
      return { repository: change.repository, kind: "revision", digest: change.digest.value };
    case "collect":
      if (change.repository === undefined || (change.kind !== "layer" && change.kind !== "manifest")) return null;
      return {
        repository: change.repository,
        kind: change.kind === "layer" ? "layer" : "revision",
        digest: change.digest.value,
      };
    default:
      return null;
  }
}

function quotaExceeded(quota: Quota, used: number, size: number): RegistryError {
  return new RegistryError(
    "DENIED",
    `quota exceeded: namespace ${quota.namespace} uses ${formatSize(used)} of its ${formatSize(quota.bytes)}, ` +
      `and this needs ${formatSize(size)} more`,
    { namespace: quota.namespace, usage: used, limit: quota.bytes, size },
  );
}

/** A call to a namespace's object; one that fails as a call is a retryable 503 (never let through). */
async function reach<T>(namespace: string, call: () => Promise<T>): Promise<T> {
  try {
    return await metered("do", "call", call);
  } catch (error) {
    if (error instanceof RegistryError) throw error;
    throw unavailable("the namespace's usage could not be checked; retry", { namespace, cause: String(error) });
  }
}

/** Tells a namespace's object of a committed change: once more after a short wait if the first call fails. */
async function tell(namespace: string, call: () => Promise<void>): Promise<void> {
  try {
    await reach(namespace, call);
  } catch {
    await new Promise((resolve) => setTimeout(resolve, 100));
    await reach(namespace, call);
  }
}

export class QuotaKeeper implements ChangePolicy, ChangeListener {
  readonly name = "quotas";

  constructor(
    private readonly env: Env,
    private readonly settings: Pick<Settings, "quotas" | "mirrors">,
  ) {}

  async check(change: Change, context: ChangeContext): Promise<void> {
    const asked = claimOf(change, context);
    if (!asked) return;
    const { claim, reserve } = asked;
    const reserved: Quota[] = [];
    try {
      for (const quota of quotasOf(this.settings, claim.repository)) {
        const answer = await reach(quota.namespace, () =>
          usageOf(this.env, quota.namespace).claim(quota.namespace, claim, quota.bytes, reserve),
        );
        if (answer.verdict === "counting") {
          throw unavailable(`the usage of namespace ${quota.namespace} is being counted; retry in a moment`, {
            namespace: quota.namespace,
          });
        }
        if (answer.verdict === "over") throw quotaExceeded(quota, answer.used, claim.size);
        if (reserve) reserved.push(quota);
      }
    } catch (error) {
      // The namespaces that did reserve (an outer one, when an inner one refused) give it back.
      for (const quota of reserved) await this.release(quota, claim);
      throw error;
    }
  }

  async abandoned(change: Change, context: ChangeContext): Promise<void> {
    const asked = claimOf(change, context);
    if (!asked?.reserve) return;
    for (const quota of quotasOf(this.settings, asked.claim.repository)) await this.release(quota, asked.claim);
  }

  /**
   * As a listener: the changes that link or unlink (never a `blob.upload`, which is only
   * judged). As a policy: those and uploads, in repositories a quota covers.
   */
  wants(action: ChangeAction, repository?: string): boolean {
    if (action === "blob.upload") return repository !== undefined && quotasOf(this.settings, repository).length > 0;
    if (!TOLD.has(action)) return false;
    return repository === undefined || quotasOf(this.settings, repository).length > 0;
  }

  async changed(change: Change, context: ChangeContext): Promise<void> {
    const asked = claimOf(change, context);
    if (asked?.reserve) {
      const { claim } = asked;
      for (const quota of quotasOf(this.settings, claim.repository)) {
        await tell(quota.namespace, () => usageOf(this.env, quota.namespace).linked(quota.namespace, claim));
      }
      return;
    }
    const removed = removedOf(change);
    if (!removed) return;
    for (const quota of quotasOf(this.settings, removed.repository)) {
      await tell(quota.namespace, () => usageOf(this.env, quota.namespace).unlinked(quota.namespace, removed));
    }
  }

  private async release(quota: Quota, key: HoldKey): Promise<void> {
    try {
      await reach(quota.namespace, () => usageOf(this.env, quota.namespace).release(quota.namespace, key));
    } catch (error) {
      // Left reserved: the object settles it from R2 once it is stale (NamespaceUsage.alarm).
      console.error(`quotas: a reservation in ${quota.namespace} could not be given back`, String(error));
    }
  }
}

/**
 * The quotas' part of the seam, registered by app.ts: a policy and a listener (one object)
 * when QUOTAS names a namespace, nothing otherwise (a push then costs what it did).
 */
export const quotaExtension: SeamExtension = {
  name: "quotas",
  policies: (env) => keeperOf(env),
  listeners: (env) => keeperOf(env),
};

function keeperOf(env: Env): QuotaKeeper[] {
  const settings = settingsOf(env);
  return settings.quotas.length === 0 ? [] : [new QuotaKeeper(env, settings)];
}
