import { DurableObject } from "cloudflare:workers";

/**
 * Failed-login limits: one LoginLimiter Durable Object per key, where a key is a user
 * name (`user:alice`) or a client address (`address:203.0.113.7`, an IPv6 client by its
 * /64). Every password check reports its outcome to the objects of both its keys; an
 * object that has seen `maxFailures` failures locks its key for `lockoutSeconds`, doubled
 * with each further failure up to `maxLockoutSeconds`. While a key is locked, attempts on
 * it are refused (429 with Retry-After) whatever their password, and are not counted, so
 * the lock grows with guesses actually checked, not with a client's retries.
 *
 * Why a Durable Object (docs/architecture.md, "Failed logins"): it is one strongly
 * consistent counter per key for the whole network, so guesses spread over locations
 * and isolates add up, and attempts on one key are serialised, so a burst of parallel
 * guesses cannot all pass before the first failure is counted: the outcome is judged
 * *after* the password check, atomically with the count, and an attempt that lands on
 * a locked key is refused even when its password was right.
 */
export interface LockoutSettings {
  /** Failures a key may have before it is locked. */
  maxFailures: number;
  /** The first lock's length; each further failure doubles it. */
  lockoutSeconds: number;
  maxLockoutSeconds: number;
}

export interface AttemptVerdict {
  refused: boolean;
  /** Seconds the key stays locked from now (0: not locked). */
  lockedFor: number;
}

interface FailureRecord {
  failures: number;
  /** ms since the epoch; 0 when not locked. */
  lockedUntil: number;
  lastFailure: number;
}

/** Failures are forgotten after this long without a new one (and the object's storage deleted). */
const FORGET_AFTER_MS = 60 * 60 * 1000;
const RECORD = "record";

export class LoginLimiter extends DurableObject<Env> {
  /**
   * Records one checked login attempt on this key and says whether its outcome stands
   * (`refused` false) or the key is locked (`refused`: the attempt is refused and not
   * counted), and for how many more seconds the key is locked (`lockedFor`, also after
   * the failure that locks it, so the caller can refuse the next attempt at once). A
   * correct attempt clears the key's failures when `clearOnSuccess` (a user's own key:
   * logging in proves who holds the password; an address key is not cleared, or one
   * account would wipe its address's record of guesses at others).
   */
  async attempt(correct: boolean, clearOnSuccess: boolean, settings: LockoutSettings): Promise<AttemptVerdict> {
    const now = Date.now();
    let record = await this.ctx.storage.get<FailureRecord>(RECORD);
    if (record && now - record.lastFailure > FORGET_AFTER_MS && now >= record.lockedUntil) record = undefined;
    if (record && now < record.lockedUntil) {
      return { refused: true, lockedFor: Math.ceil((record.lockedUntil - now) / 1000) };
    }
    if (correct) {
      if (record && clearOnSuccess) await this.forget();
      return { refused: false, lockedFor: 0 };
    }
    const failures = (record?.failures ?? 0) + 1;
    let lockedUntil = 0;
    if (failures >= settings.maxFailures) {
      const doublings = Math.min(30, failures - settings.maxFailures);
      const seconds = Math.min(settings.maxLockoutSeconds, settings.lockoutSeconds * 2 ** doublings);
      lockedUntil = now + seconds * 1000;
    }
    await this.ctx.storage.put<FailureRecord>(RECORD, { failures, lockedUntil, lastFailure: now });
    await this.ctx.storage.setAlarm(Math.max(lockedUntil, now + FORGET_AFTER_MS));
    return { refused: false, lockedFor: lockedUntil === 0 ? 0 : Math.ceil((lockedUntil - now) / 1000) };
  }

  /** Quiet long enough: forget the key entirely (no storage is kept for it). */
  override async alarm(): Promise<void> {
    const record = await this.ctx.storage.get<FailureRecord>(RECORD);
    const now = Date.now();
    if (!record || (now - record.lastFailure >= FORGET_AFTER_MS && now >= record.lockedUntil)) {
      await this.forget();
      return;
    }
    await this.ctx.storage.setAlarm(Math.max(record.lockedUntil, record.lastFailure + FORGET_AFTER_MS));
  }

  private async forget(): Promise<void> {
    await this.ctx.storage.deleteAlarm();
    await this.ctx.storage.deleteAll();
  }
}
