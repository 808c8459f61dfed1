import { isolateEnv } from "../settings/request-env";
import type { Digest } from "../oci/digest";

/**
 * The seam every change to what a repository holds passes through (docs/architecture.md,
 * "The repository seam"). The repository API (repository.ts) describes each change it is
 * about to make as a `Change`, asks every `ChangePolicy` first (any may refuse it, by
 * throwing a RegistryError, before anything is written), makes it, and tells every
 * `ChangeListener` once it is committed. Events, audit, quotas and immutable tags are
 * policies and listeners; no route knows about them.
 */

/** Who made a change: whatever authenticated the request, or the registry itself. */
export interface Actor {
  /**
   * `user`: a password (htpasswd) user, through Basic or a token; `anonymous`: nobody
   * logged in; `robot`: a robot token (src/auth/robots.ts); `oidc`: an OIDC login (an
   * issuer's ID token); `collector` and `mirror`: the registry's own work.
   */
  kind: "user" | "robot" | "anonymous" | "oidc" | "collector" | "mirror" | "system";
  /**
   * The user name; a robot's name; for `oidc`, `<issuer>#<subject>` (both identities); the
   * component's name for the registry's own actors; "" for anonymous.
   */
  name: string;
}

/** Where a change came from: who, and which request (for events and the audit log). */
export interface ChangeContext {
  actor: Actor;
  /** The request's id (Cloudflare's `CF-Ray`, or one made up), or the run's for background work. */
  requestId: string;
  /** The client's address, when a client made the change. */
  address?: string;
  userAgent?: string;
  /** The registry's origin (`https://registry.example.com`) as the client addressed it. */
  origin?: string;
}

export const SYSTEM_CONTEXT: ChangeContext = { actor: { kind: "system", name: "registry" }, requestId: "" };

/**
 * A context as a plain object, its fields read now: what crosses to a Durable Object or is
 * stored (an upload's commit), and, with `actor`, the same request's changes attributed to
 * another (what a mirror stores is the mirror's doing). A request's own context reads its
 * fields only when asked (routes/http.ts), which neither a copy nor a spread would keep.
 */
export function plainContext(context: ChangeContext, actor: Actor = context.actor): ChangeContext {
  const plain: ChangeContext = { actor, requestId: context.requestId };
  const { address, userAgent, origin } = context;
  if (address !== undefined) plain.address = address;
  if (userAgent !== undefined) plain.userAgent = userAgent;
  if (origin !== undefined) plain.origin = origin;
  return plain;
}

/** The changes a repository goes through, one kind per write the API makes. */
export type Change =
  /** An upload finished: the blob is stored (if it was not already) and linked here. */
  | { action: "blob.commit"; repository: string; digest: Digest; size: number }
  /**
   * A blob of `size` bytes is about to be uploaded and committed here (a commit whose
   * length is known before its bytes are received: a monolithic POST or PUT declaring its
   * Content-Length, or a PUT closing a chunked upload). Asked of the policies only, so one
   * (a quota) can refuse before anything is stored; told to no listener, as nothing is
   * written. The commit itself is a `blob.commit` as always.
   */
  | { action: "blob.upload"; repository: string; digest: Digest; size: number }
  /** A blob stored already was linked here from another repository (`POST ?mount=`). */
  | { action: "blob.mount"; repository: string; digest: Digest; size: number; from?: string }
  /** A repository's link to a blob was removed (`DELETE /v2/<name>/blobs/<digest>`). */
  | { action: "blob.unlink"; repository: string; digest: Digest }
  /** A manifest was stored and linked here, and the listed tags now name it. */
  | {
      action: "manifest.put";
      repository: string;
      digest: Digest;
      mediaType: string;
      size: number;
      tags: string[];
      subject?: Digest;
    }
  /** A manifest's revision link was removed, with the tags that named it. */
  | { action: "manifest.delete"; repository: string; digest: Digest; tags: string[] }
  /**
   * A tag that named another manifest (`previous`) now names `digest`: told besides the
   * push's `manifest.put`. Known only while someone listens or judges (it costs a read).
   */
  | { action: "tag.move"; repository: string; tag: string; digest: Digest; previous: Digest }
  /** A tag was removed (`DELETE /v2/<name>/manifests/<tag>`). */
  | { action: "tag.delete"; repository: string; tag: string }
  /** The mirror stored what it fetched from an upstream (a manifest, with its tag, or a blob). */
  | {
      action: "mirror.store";
      repository: string;
      digest: Digest;
      kind: "manifest" | "blob";
      size: number;
      mediaType?: string;
      tag?: string;
    }
  /** The collector removed something no longer needed (docs/architecture.md, "Garbage collection"). */
  | {
      action: "collect";
      kind: "tag" | "manifest" | "layer" | "blob";
      /** Absent for a blob: blobs are global. */
      repository?: string;
      digest: Digest;
      tag?: string;
    };

export type ChangeAction = Change["action"];

/** The repository a change is in (none for a blob the collector removes). */
export function repositoryOf(change: Change): string | undefined {
  return change.repository;
}

/**
 * A client read what a repository holds (a GET of a manifest or a blob): no change, told
 * only to the pull listeners, and only when one is registered (webhook endpoints that
 * asked for pull events). A HEAD, which transfers nothing, is no pull.
 */
export type Pull =
  | { action: "manifest.pull"; repository: string; digest: Digest; mediaType: string; size: number; tag?: string }
  | { action: "blob.pull"; repository: string; digest: Digest; size: number };

/**
 * What the policies ask of the write that makes the changes they let through, beyond a
 * yes: conditions the storage write itself enforces, so that two concurrent requests
 * cannot both pass a check made before either wrote. One kind today: tags the write may
 * only create, never move (immutable tags). If another write set such a tag to another
 * manifest first, the write refuses with the policy's reason (DENIED).
 */
export class WriteConditions {
  /** Tag → the refusal if it already names another manifest when the write comes to it. */
  readonly createOnlyTags = new Map<string, string>();

  createOnly(tag: string, reason: string): void {
    if (!this.createOnlyTags.has(tag)) this.createOnlyTags.set(tag, reason);
  }
}

/** Asked before a change is made; refuses it by throwing (a RegistryError, usually DENIED). */
export interface ChangePolicy {
  readonly name: string;
  /**
   * Which changes it judges (absent: all), by action and repository (absent for a blob
   * the collector removes: blobs are global). A policy that wants no `tag.move` in a
   * repository spares its pushes a read per tag.
   */
  wants?(action: ChangeAction, repository?: string): boolean;
  /** Refuses by throwing; may add conditions the write must meet (`conditions`). */
  check(change: Change, context: ChangeContext, conditions: WriteConditions): void | Promise<void>;
  /**
   * Told when a change this policy let through was not made after all: a later policy
   * refused it, or the write failed or found nothing to do. A policy that reserved
   * something in `check` (a quota's bytes) gives it back here. Its failure is logged.
   */
  abandoned?(change: Change, context: ChangeContext): void | Promise<void>;
}

/**
 * Told after a change is committed, once. A listener's failure is its own (logged): the
 * change is made and the client's answer stands.
 */
export interface ChangeListener {
  readonly name: string;
  /**
   * Which changes it wants told (absent: all). A change nobody wants is not described at
   * all where describing it costs something (a `tag.move` costs a read of each tag).
   */
  wants?(action: ChangeAction): boolean;
  changed(change: Change, context: ChangeContext): void | Promise<void>;
}

export type PullAction = Pull["action"];

/**
 * Told of a pull as the answer is made: it must never slow a pull down, so it returns at
 * once, and work it hands back (a promise) is kept going after the answer (the request's
 * waitUntil). Its failure is its own (logged).
 */
export interface PullListener {
  readonly name: string;
  /** Which pulls it wants told (absent: both): a pull of a kind nobody wants costs nothing more. */
  wantsPull?(action: PullAction): boolean;
  pulled(pull: Pull, context: ChangeContext): void | Promise<void>;
}

/** The policies and listeners a repository API consults. */
export class ChangeSeam {
  /** The pull listeners that want each kind of pull. */
  private readonly pullWatchers: Record<PullAction, readonly PullListener[]>;

  constructor(
    readonly policies: readonly ChangePolicy[] = [],
    readonly listeners: readonly ChangeListener[] = [],
    readonly pullListeners: readonly PullListener[] = [],
  ) {
    const wanting = (action: PullAction) => pullListeners.filter((listener) => listener.wantsPull?.(action) ?? true);
    this.pullWatchers = { "manifest.pull": wanting("manifest.pull"), "blob.pull": wanting("blob.pull") };
  }

  /** Whether anyone asked to hear of pulls of this kind (`manifest.pull`, `blob.pull`): when not, such a pull costs nothing more. */
  watches(action: PullAction): boolean {
    return this.pullWatchers[action].length > 0;
  }

  /**
   * Tells the pull listeners that want `pull`; what they hand back goes on after the
   * answer (`waitUntil`). A listener with nothing to do costs a call: no promise, no task.
   */
  observe(pull: Pull, context: ChangeContext, waitUntil: (work: Promise<unknown>) => void): void {
    const failed = (listener: PullListener, error: unknown) =>
      console.error(`pull listener ${listener.name} failed`, pull.action, String(error));
    for (const listener of this.pullWatchers[pull.action]) {
      let work: void | Promise<void>;
      try {
        work = listener.pulled(pull, context);
      } catch (error) {
        failed(listener, error);
        continue;
      }
      if (work) waitUntil(work.catch((error: unknown) => failed(listener, error)));
    }
  }

  /** Whether anyone is listening or judging: when not, callers may skip describing changes. */
  get idle(): boolean {
    return this.policies.length === 0 && this.listeners.length === 0;
  }

  /** Whether any policy judges changes of `action` in `repository` (a `blob.upload`: then it is asked). */
  judges(action: ChangeAction, repository?: string): boolean {
    return this.policies.some((policy) => policy.wants?.(action, repository) ?? true);
  }

  /** Whether a policy judges, or a listener wants told, changes of `action` (in `repository`). */
  wants(action: ChangeAction, repository?: string): boolean {
    return (
      this.policies.some((policy) => policy.wants?.(action, repository) ?? true) ||
      this.listeners.some((listener) => listener.wants?.(action) ?? true)
    );
  }

  /**
   * Asks every policy, in order; the first refusal stops the change, and the policies that
   * had let it through are told it was abandoned.
   */
  async check(change: Change, context: ChangeContext, conditions = new WriteConditions()): Promise<void> {
    for (const [index, policy] of this.policies.entries()) {
      if (policy.wants && !policy.wants(change.action, repositoryOf(change))) continue;
      try {
        await policy.check(change, context, conditions);
      } catch (error) {
        await this.abandon([change], context, index);
        throw error;
      }
    }
  }

  /** Tells the first `passed` policies (all by default) that `changes` were not made. */
  async abandon(changes: readonly Change[], context: ChangeContext, passed = this.policies.length): Promise<void> {
    for (const change of changes) {
      for (const policy of this.policies.slice(0, passed)) {
        if (!policy.abandoned || (policy.wants && !policy.wants(change.action, repositoryOf(change)))) continue;
        try {
          await policy.abandoned(change, context);
        } catch (error) {
          console.error(`change policy ${policy.name} failed to let go`, change.action, String(error));
        }
      }
    }
  }

  /** Tells every listener (that wants it) of a committed change. */
  async committed(change: Change, context: ChangeContext): Promise<void> {
    for (const listener of this.listeners) {
      if (listener.wants && !listener.wants(change.action)) continue;
      try {
        await listener.changed(change, context);
      } catch (error) {
        console.error(`change listener ${listener.name} failed`, change.action, String(error));
      }
    }
  }

  /**
   * Checks `change`, runs `write` (with the conditions the policies set), and, when it
   * returns true (or nothing), tells the listeners.
   */
  async apply<T>(
    change: Change,
    context: ChangeContext,
    write: (conditions: WriteConditions) => Promise<T>,
  ): Promise<T> {
    return this.applyAll([change], context, write);
  }

  /** `apply` for one write that makes several changes at once (a push that moves tags). */
  async applyAll<T>(
    changes: readonly Change[],
    context: ChangeContext,
    write: (conditions: WriteConditions) => Promise<T>,
  ): Promise<T> {
    const conditions = new WriteConditions();
    for (const [index, change] of changes.entries()) {
      try {
        await this.check(change, context, conditions);
      } catch (error) {
        await this.abandon(changes.slice(0, index), context);
        throw error;
      }
    }
    let result: T;
    try {
      result = await write(conditions);
    } catch (error) {
      await this.abandon(changes, context);
      throw error;
    }
    if (result === false) await this.abandon(changes, context);
    else for (const change of changes) await this.committed(change, context);
    return result;
  }
}

/**
 * Test seam, empty in production: a unit test registers a policy or a listener here, and
 * every repository API built afterwards in this isolate consults it (after the ones the
 * settings configure).
 */
export const changeHooks: { policies: ChangePolicy[]; listeners: ChangeListener[]; pullListeners: PullListener[] } = {
  policies: [],
  listeners: [],
  pullListeners: [],
};

const IDLE_SEAM = new ChangeSeam();

/** What a layer above the registry adds to the seam for an environment: policies and listeners. */
export interface SeamExtension {
  readonly name: string;
  policies?(env: Env): readonly ChangePolicy[];
  listeners?(env: Env): readonly ChangeListener[];
  /** Who hears of pulls (none unless asked for: a pull then costs what it did). */
  pullListeners?(env: Env): readonly PullListener[];
}

const extensions: SeamExtension[] = [];

/**
 * Registers the policies and listeners of a layer above the registry (events, audit,
 * quotas, immutable tags): the composition root (app.ts) does, so the registry imports
 * none of them. Each builds what its settings ask for (none: nothing is added).
 */
export function addSeamExtension(extension: SeamExtension): void {
  if (!extensions.some((known) => known.name === extension.name)) extensions.push(extension);
}

/** The seam each environment object gets, built once (the Worker's env is one object per isolate). */
const seams = new WeakMap<object, ChangeSeam>();

/**
 * The policies and listeners every change is checked by and told to: those the registered
 * extensions build from the settings, then any a test registered (changeHooks). Idle (none)
 * by default. The one place a seam is built: the repository API, the upload engine and the
 * collector all take theirs from here.
 */
export function changeSeamOf(requestEnv: Env): ChangeSeam {
  // Per isolate, its policies and listeners built with the Worker's env, never a request's.
  const env = isolateEnv(requestEnv);
  const hooked =
    changeHooks.policies.length > 0 || changeHooks.listeners.length > 0 || changeHooks.pullListeners.length > 0;
  const known = hooked ? undefined : seams.get(env);
  if (known) return known;
  const policies = extensions.flatMap((extension) => extension.policies?.(env) ?? []);
  const listeners = extensions.flatMap((extension) => extension.listeners?.(env) ?? []);
  const pullListeners = extensions.flatMap((extension) => extension.pullListeners?.(env) ?? []);
  const seam =
    policies.length === 0 && listeners.length === 0 && pullListeners.length === 0 && !hooked
      ? IDLE_SEAM
      : new ChangeSeam(
          [...policies, ...changeHooks.policies],
          [...listeners, ...changeHooks.listeners],
          [...pullListeners, ...changeHooks.pullListeners],
        );
  if (!hooked) seams.set(env, seam);
  return seam;
}
