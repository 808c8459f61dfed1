// The one Node API the Worker uses (nodejs_compat provides it at run time). Declared here
// rather than through @types/node, whose Node globals would clash with the Workers types.
declare module "node:async_hooks" {
  export class AsyncLocalStorage<T> {
    getStore(): T | undefined;
    run<R>(store: T, callback: () => R): R;
  }
}
