import type { Result, Router } from "hono/router";

/** Most matches kept; a full memory starts afresh (one more search per request until it refills). */
const REMEMBERED_MAX = 1000;

/**
 * Hono's router with a memory of its answers per isolate, by method and path. The API's
 * routes name repositories with `:name{.+}` (a name has slashes), which Hono's fast
 * RegExpRouter cannot take, so they are matched by its TrieRouter: a search that tries
 * each route's pattern against the rest of the path, about a tenth of a small request's
 * CPU. A match is a pure function of the method and the path, and pulls repeat both (a
 * manifest's HEAD then GET, every client pulling the same layers, retries), so a path
 * seen before is answered from memory. Bounded: REMEMBERED_MAX paths.
 */
export class RememberingRouter<T> implements Router<T> {
  readonly name: string;
  private readonly remembered = new Map<string, Result<T>>();

  constructor(private readonly router: Router<T>) {
    this.name = `RememberingRouter(${router.name})`;
  }

  add(method: string, path: string, handler: T): void {
    this.remembered.clear();
    this.router.add(method, path, handler);
  }

  match(method: string, path: string): Result<T> {
    const key = `${method} ${path}`;
    let result = this.remembered.get(key);
    if (result === undefined) {
      result = this.router.match(method, path);
      if (this.remembered.size >= REMEMBERED_MAX) this.remembered.clear();
      this.remembered.set(key, result);
    }
    return result;
  }
}
