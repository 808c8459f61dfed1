/* global Response */
// The floor's Worker with the Durable Object classes our wrangler.toml declares
// (bench/floor/serve.mjs --config ours): the same stand-in, so that workerd runs it with our
// bindings, compatibility date and flags. The classes are never called.
export { default } from "./worker.js";

class Unused {
  fetch() {
    return new Response("not used by the floor", { status: 501 });
  }
}
export class UploadSession extends Unused {}
export class LoginLimiter extends Unused {}
export class GarbageCollector extends Unused {}
export class NamespaceUsage extends Unused {}
