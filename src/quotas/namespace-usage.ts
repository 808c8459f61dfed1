import { DurableObject } from "cloudflare:workers";
import { parseDigest } from "../oci/digest";
import { forEachBounded } from "../registry/bounded";
import { Inventory } from "../registry/inventory";
import { storageOf } from "../registry/storage";
import { isMirrorStore } from "../settings/quotas";
import { settingsOf } from "../settings/settings";
import { UsageLedger, type Claim, type ClaimAnswer, type HoldKey, type RepositoryUsage } from "./usage-ledger";

/**
 * One namespace's usage (docs/architecture.md, "Storage quotas"): a Durable Object per
 * namespace QUOTAS names (`USAGE.idFromName(namespace)`), so every push into it is checked
 * against one strongly consistent ledger (usage-ledger.ts), and two pushes racing for the
 * last bytes are served one after the other: the first reserves them, the second finds
 * them taken.
 *
 * The quota policy (quota-keeper.ts) reserves before a push writes and gives back what a
 * push abandoned; its listener turns reservations into holds once the links are written,
 * and drops holds when links are removed (deletes, the collector's `collect` changes).
 *
 * **Counting.** A namespace may hold data before its quota is configured, so the object
 * counts what its repositories link before it judges a push: it lists their links in R2
 * (`repositories/<namespace>/`, 200 keys a step) and reads the size of each blob it has
 * not seen (one head each), a step at a time, each step exclusive (no change is recorded
 * in the middle of one), so a link written or removed meanwhile is either listed or told,
 * never lost or counted twice. The first push runs up to INLINE_STEPS steps itself (an
 * empty or small namespace is counted at once); a larger one is counted on by the object's
 * alarm, and pushes get a retryable 503 until it is done. `recount` (npm run verify --
 * --repair, on drift) starts over the same way.
 */

/** What one namespace holds, for /_admin/usage, the pages and the integrity check. */
export interface UsageReport {
  namespace: string;
  /** Bytes of the distinct blobs its repositories link (or pushes in flight reserved). */
  bytes: number;
  /** False until its links have been counted once (after a recount too): `bytes` is then partial. */
  counted: boolean;
  /** Pushes that reserved bytes and have not yet been told committed or abandoned. */
  reservations: number;
  repositoryCount: number;
  /** The largest repositories (or the one asked for). */
  repositories: RepositoryUsage[];
}

/** Keys a count step lists (and, at most, descriptors it reads). */
const COUNT_PAGE = 200;
/** Count steps a push (or a report) runs itself before leaving the rest to the alarm. */
const INLINE_STEPS = 3;
/** Count steps one alarm runs (each at most ~201 storage calls: under the 1 000 of a Free-plan invocation). */
const ALARM_STEPS = 4;
/** A reservation this old was abandoned without a word (its Worker ended): R2 says what became of it. */
const STALE_RESERVATION_MS = 15 * 60 * 1000;
/** Stale reservations one alarm settles. */
const SETTLE_BATCH = 50;

interface CountState {
  cursor: string | null;
}

export class NamespaceUsage extends DurableObject<Env> {
  private readonly ledger: UsageLedger;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.ledger = new UsageLedger(ctx.storage.sql, ctx.storage.kv);
  }

  private get inventory(): Inventory {
    return new Inventory(storageOf(this.env));
  }

  /**
   * Whether `claim` fits under `limit` (and, with `reserve`, holds it at once): counts the
   * namespace first when it has not been counted; `counting` while that goes on.
   */
  async claim(namespace: string, claim: Claim, limit: number, reserve: boolean): Promise<ClaimAnswer> {
    this.remember(namespace);
    if (!(await this.countFor(INLINE_STEPS))) return { verdict: "counting", used: this.ledger.used };
    const answer = this.ledger.claim(claim, limit, reserve, Date.now());
    if (reserve && answer.verdict === "fits") await this.wakeAt(Date.now() + STALE_RESERVATION_MS);
    return answer;
  }

  /**
   * A reservation the push gave back (refused later, or its write failed or did nothing).
   * The link may be in R2 all the same (a write that failed after it): R2 says.
   */
  async release(namespace: string, key: HoldKey): Promise<void> {
    this.remember(namespace);
    await this.exclusive(async () => {
      const present = await this.inventory.links(key.repository, key.kind, parseDigest(key.digest));
      this.ledger.release(key, present);
    });
  }

  /** The push's link is written: its reservation is a hold. */
  async linked(namespace: string, claim: Claim): Promise<void> {
    this.remember(namespace);
    this.ledger.linked(claim, true);
    await this.startCounting();
  }

  /** A link was removed (a delete, or the collector). */
  async unlinked(namespace: string, key: HoldKey): Promise<void> {
    this.remember(namespace);
    this.ledger.unlinked(key);
    await this.startCounting();
  }

  /** What the namespace holds now: its total and its largest repositories (`limit`), or `repository`'s. */
  async report(namespace: string, options: { limit: number; repository?: string }): Promise<UsageReport> {
    this.remember(namespace);
    const counted = await this.countFor(INLINE_STEPS);
    return {
      namespace,
      bytes: this.ledger.used,
      counted,
      reservations: this.ledger.reservations(),
      repositoryCount: this.ledger.repositoryCount(),
      repositories: this.ledger.repositories(options.limit, options.repository),
    };
  }

  /** Forgets what it recorded and counts the namespace's links again (a repair of drift). */
  async recount(namespace: string): Promise<UsageReport> {
    this.remember(namespace);
    await this.exclusive(async () => {
      this.ledger.reset();
      this.ctx.storage.kv.put<CountState>(COUNT, { cursor: null });
      this.ctx.storage.kv.put(COUNTED, false);
    });
    return this.report(namespace, { limit: 0 });
  }

  /** Counts on (a large namespace), and settles reservations nobody came back for. */
  override async alarm(): Promise<void> {
    if (this.namespace === undefined) return;
    await this.countFor(ALARM_STEPS);
    for (const key of this.ledger.staleReservations(Date.now() - STALE_RESERVATION_MS, SETTLE_BATCH)) {
      await this.exclusive(async () => {
        const present = await this.inventory.links(key.repository, key.kind, parseDigest(key.digest));
        this.ledger.settle(key, present);
      });
    }
    if (this.ledger.reservations() > 0) await this.wakeAt(Date.now() + STALE_RESERVATION_MS);
  }

  // ---- counting ----

  private get namespace(): string | undefined {
    return this.ctx.storage.kv.get<string>(NAMESPACE);
  }

  private remember(namespace: string): void {
    if (this.namespace !== namespace) this.ctx.storage.kv.put(NAMESPACE, namespace);
  }

  private get counted(): boolean {
    return this.ctx.storage.kv.get<boolean>(COUNTED) === true;
  }

  /** A namespace never counted starts its count (the alarm takes it on). */
  private async startCounting(): Promise<void> {
    if (this.counted || this.ctx.storage.kv.get<CountState>(COUNT)) return;
    this.ctx.storage.kv.put<CountState>(COUNT, { cursor: null });
    await this.wakeAt(Date.now());
  }

  /** Runs up to `steps` count steps; whether the namespace is counted after them (else the alarm goes on). */
  private async countFor(steps: number): Promise<boolean> {
    if (this.counted) return true;
    if (!this.ctx.storage.kv.get<CountState>(COUNT)) this.ctx.storage.kv.put<CountState>(COUNT, { cursor: null });
    for (let step = 0; step < steps && !this.counted; step++) await this.exclusive(() => this.countStep());
    if (this.counted) return true;
    await this.wakeAt(Date.now());
    return false;
  }

  /**
   * One page of the namespace's links: each is a hold (its blob's size known, or read
   * from its descriptor: a link naming no stored blob counts nothing). Run exclusively:
   * a change told meanwhile waits until the page is recorded, and R2's listing is strongly
   * consistent, so a link is either listed or its change arrives after this page.
   */
  private async countStep(): Promise<void> {
    const state = this.ctx.storage.kv.get<CountState>(COUNT);
    const namespace = this.namespace;
    if (!state || namespace === undefined) return;
    const page = await this.inventory.repositoryEntries({
      under: namespace,
      limit: COUNT_PAGE,
      metadata: false,
      ...(state.cursor ? { cursor: state.cursor } : {}),
    });
    const mirrors = settingsOf(this.env).mirrors;
    const links = page.items.flatMap((item) =>
      item.link && !isMirrorStore(mirrors, item.name)
        ? [{ repository: item.name, kind: item.link.kind, digest: item.link.digest }]
        : [],
    );
    const unknown = [...new Set(links.map((link) => link.digest.value))].filter((d) => this.ledger.sizeOf(d) === null);
    const sizes = new Map<string, number | null>();
    const byValue = new Map(links.map((link) => [link.digest.value, link.digest]));
    await forEachBounded(unknown, 6, async (digest) => {
      const parsed = byValue.get(digest);
      if (parsed) sizes.set(digest, await this.inventory.blobSize(parsed));
    });
    for (const link of links) {
      const digest = link.digest.value;
      const size = this.ledger.sizeOf(digest) ?? sizes.get(digest) ?? null;
      if (size !== null) this.ledger.linked({ repository: link.repository, kind: link.kind, digest, size }, false);
    }
    if (page.cursor === null) {
      this.ctx.storage.kv.delete(COUNT);
      this.ctx.storage.kv.put(COUNTED, true);
    } else {
      this.ctx.storage.kv.put<CountState>(COUNT, { cursor: page.cursor });
    }
  }

  /**
   * Runs `work` with no other call let in meanwhile. A failure (R2 unavailable) is thrown
   * to the caller: blockConcurrencyWhile would reset the object for it.
   */
  private async exclusive(work: () => Promise<void>): Promise<void> {
    let failure: { error: unknown } | null = null;
    await this.ctx.blockConcurrencyWhile(async () => {
      try {
        await work();
      } catch (error) {
        failure = { error };
      }
    });
    if (failure) throw (failure as { error: unknown }).error;
  }

  /** Sets the alarm for `at` unless it is set for sooner. */
  private async wakeAt(at: number): Promise<void> {
    const current = await this.ctx.storage.getAlarm();
    if (current === null || current > at) await this.ctx.storage.setAlarm(at);
  }
}

const NAMESPACE = "namespace";
const COUNT = "count";
const COUNTED = "counted";
