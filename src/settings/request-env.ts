/**
 * The env a request's code is given: the Worker's own env as its prototype (every binding
 * and setting read through it), with what belongs to that one request kept beside it (its
 * meter: registry/meter.ts `withMeter`). Per-isolate caches are kept by, and built with,
 * the Worker's env (`isolateEnv`), so nothing of a request outlives it.
 */

/** Each request's env and the Worker's env behind it: by object, so a copy of one is an env of its own. */
const isolateEnvs = new WeakMap<object, object>();

/** A request's env over the Worker's `env`. */
export function requestEnv<E extends object>(env: E): E {
  const base = isolateEnv(env);
  const scoped = Object.create(base) as E;
  isolateEnvs.set(scoped, base);
  return scoped;
}

/** The Worker's own env behind a request's (the env itself when it is not a request's). */
export function isolateEnv<E extends object>(env: E): E {
  return (isolateEnvs.get(env) as E | undefined) ?? env;
}
