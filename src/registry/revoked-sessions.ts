import { Paths } from "./paths";
import type { Storage } from "./storage";

/**
 * Web sessions ended before their expiry (a logout). A session cookie is a signed token
 * that would otherwise stay valid until it expires (12 h); its id is recorded here, in R2
 * (strongly consistent: a logout holds at every location at once), and a page refuses a
 * session whose id is recorded. Records are kept until the session would have expired.
 */
export class RevokedSessions {
  constructor(private readonly storage: Storage) {}

  async revoke(sessionId: string, expiresAt: number): Promise<void> {
    await this.storage.bucket.put(Paths.revokedSession(expiresAt, sessionId), new Uint8Array(0));
  }

  async isRevoked(sessionId: string, expiresAt: number): Promise<boolean> {
    return (await this.storage.bucket.head(Paths.revokedSession(expiresAt, sessionId))) !== null;
  }

  /**
   * Removes the records of sessions that have expired anyway, oldest first, at most
   * `limit` of them (one bounded step: the daily cron calls it). Returns how many went.
   */
  async prune(nowSeconds: number, limit = 1000): Promise<number> {
    const listed = await this.storage.bucket.list({ prefix: Paths.revokedSessionPrefix, limit });
    const expired = listed.objects
      .map((object) => object.key)
      .filter((key) => Paths.revokedSessionExpiry(key) < nowSeconds);
    if (expired.length > 0) await this.storage.bucket.delete(expired);
    return expired.length;
  }
}
