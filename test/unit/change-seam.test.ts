import { createExecutionContext, env, waitOnExecutionContext } from "cloudflare:test";
import bcrypt from "bcryptjs";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import worker from "../../src/index";
import { RegistryError } from "../../src/oci/errors";
import { changeHooks, type Change, type ChangeContext } from "../../src/registry/changes";
import { MediaTypes, pushImageWith, sha256, uploadWith, utf8 } from "./helpers";

// The change seam (src/registry/changes.ts): every change a repository goes through is asked
// of the policies before anything is written and told to the listeners once committed,
// exactly once, with who made it. The collector's removals: gc-seam.test.ts; the mirror's
// stores: mirror.test.ts.

let authEnv: Env;

beforeAll(() => {
  authEnv = {
    ...env,
    AUTH_MODE: undefined,
    AUTH_USERS: [`alice:${bcrypt.hashSync("alice-pw", 4)}`, `bob:${bcrypt.hashSync("bob-pw", 4)}`].join("\n"),
    TOKEN_SECRET: "a test key of the registry, long and random in production",
    AUTH_ACCESS: JSON.stringify([{ repositories: ["**"], users: ["*"], actions: ["pull", "push", "delete"] }]),
  } as Env;
});

afterEach(() => {
  changeHooks.listeners.length = 0;
  changeHooks.policies.length = 0;
});

/** What a listener heard: each change with the actor and request id it came with. */
function listen(): { heard: { change: Change; context: ChangeContext }[] } {
  const log = { heard: [] as { change: Change; context: ChangeContext }[] };
  changeHooks.listeners.push({ name: "test", changed: (change, context) => void log.heard.push({ change, context }) });
  return log;
}

/** A request as `user` (Basic auth), through the Worker's fetch handler, with its background work done. */
async function as(user: "alice" | "bob", path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  headers.set("Authorization", `Basic ${btoa(`${user}:${user}-pw`)}`);
  headers.set("CF-Ray", `ray-${user}-${crypto.randomUUID().slice(0, 8)}`);
  const ctx = createExecutionContext();
  const response = await worker.fetch(
    new Request(new URL(path, "http://registry.test"), { ...init, headers }),
    authEnv,
    ctx,
  );
  await waitOnExecutionContext(ctx);
  return response;
}

function upload(user: "alice" | "bob", name: string, bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  return uploadWith((path, init) => as(user, path, init), name, bytes);
}

function image(user: "alice" | "bob", name: string, tag: string, seed: string) {
  return pushImageWith((path, init) => as(user, path, init), name, tag, seed);
}

function summary(heard: { change: Change; context: ChangeContext }[]) {
  return heard.map(({ change, context }) => {
    const described: Record<string, unknown> = { action: change.action, actor: context.actor.name };
    if ("repository" in change) described.repository = change.repository;
    if ("digest" in change) described.digest = change.digest.value;
    if ("tag" in change && change.tag !== undefined) described.tag = change.tag;
    if ("tags" in change) described.tags = change.tags;
    if ("previous" in change) described.previous = change.previous.value;
    if ("from" in change) described.from = change.from;
    return described;
  });
}

describe("the change seam", () => {
  it("a push tells its blob commits and its manifest with its tag, once each, with the user and the request", async () => {
    const log = listen();
    const pushed = await image("alice", "seam/push", "v1", "push");
    expect(summary(log.heard)).toEqual([
      { action: "blob.commit", actor: "alice", repository: "seam/push", digest: pushed.configDigest },
      { action: "blob.commit", actor: "alice", repository: "seam/push", digest: pushed.layerDigest },
      { action: "manifest.put", actor: "alice", repository: "seam/push", digest: pushed.digest, tags: ["v1"] },
    ]);
    for (const { context } of log.heard) {
      expect(context.actor).toEqual({ kind: "user", name: "alice" });
      expect(context.requestId).toMatch(/^ray-alice-/);
    }
    // Three requests, three ids.
    expect(new Set(log.heard.map(({ context }) => context.requestId)).size).toBe(3);
  });

  it("a mount, a tag move, a tag delete, a manifest delete and a blob unlink are told once each", async () => {
    const first = await image("alice", "seam/source", "v1", "moves");
    const log = listen();
    const mounted = await as("bob", `/v2/seam/target/blobs/uploads/?mount=${first.layerDigest}&from=seam/source`, {
      method: "POST",
    });
    expect(mounted.status).toBe(201);
    const second = await image("bob", "seam/source", "v1", "moves again");
    expect((await as("bob", "/v2/seam/source/manifests/v1", { method: "DELETE" })).status).toBe(202);
    const tagged = await as("bob", `/v2/seam/source/manifests/keep`, {
      method: "PUT",
      headers: { "Content-Type": MediaTypes.ociManifest },
      body: await (await as("bob", `/v2/seam/source/manifests/${first.digest}`)).arrayBuffer(),
    });
    expect(tagged.status).toBe(201);
    expect((await as("bob", `/v2/seam/source/manifests/${first.digest}`, { method: "DELETE" })).status).toBe(202);
    expect((await as("bob", `/v2/seam/target/blobs/${first.layerDigest}`, { method: "DELETE" })).status).toBe(202);
    expect(summary(log.heard)).toEqual([
      { action: "blob.mount", actor: "bob", repository: "seam/target", digest: first.layerDigest, from: "seam/source" },
      { action: "blob.commit", actor: "bob", repository: "seam/source", digest: second.configDigest },
      { action: "blob.commit", actor: "bob", repository: "seam/source", digest: second.layerDigest },
      { action: "manifest.put", actor: "bob", repository: "seam/source", digest: second.digest, tags: ["v1"] },
      {
        action: "tag.move",
        actor: "bob",
        repository: "seam/source",
        digest: second.digest,
        tag: "v1",
        previous: first.digest,
      },
      { action: "tag.delete", actor: "bob", repository: "seam/source", tag: "v1" },
      { action: "manifest.put", actor: "bob", repository: "seam/source", digest: first.digest, tags: ["keep"] },
      { action: "manifest.delete", actor: "bob", repository: "seam/source", digest: first.digest, tags: ["keep"] },
      { action: "blob.unlink", actor: "bob", repository: "seam/target", digest: first.layerDigest },
    ]);
  });

  it("a push costs what it did unless someone wants tag moves: only then is each tag read first", async () => {
    await image("alice", "seam/cost", "v1", "cost one");
    const r2Calls = async (seed: string) => {
      const config = utf8(JSON.stringify({ architecture: "amd64", os: "linux", seed }));
      const configDigest = await upload("alice", "seam/cost", config);
      const response = await as("alice", "/v2/seam/cost/manifests/v1", {
        method: "PUT",
        headers: { "Content-Type": MediaTypes.ociManifest },
        body: utf8(
          JSON.stringify({
            schemaVersion: 2,
            mediaType: MediaTypes.ociManifest,
            config: { mediaType: MediaTypes.ociConfig, digest: configDigest, size: config.byteLength },
            layers: [],
          }),
        ),
      });
      expect(response.status).toBe(201);
      return Number(/r2;dur=[\d.]+;desc="(\d+)"/.exec(response.headers.get("Server-Timing") ?? "")?.[1]);
    };
    const idle = await r2Calls("idle");
    const heard: string[] = [];
    changeHooks.listeners.push({
      name: "no moves",
      wants: (action) => action !== "tag.move",
      changed: (change) => void heard.push(change.action),
    });
    expect(await r2Calls("not moves")).toBe(idle);
    expect(heard).toEqual(["blob.commit", "manifest.put"]);
    changeHooks.listeners.push({ name: "moves", wants: (action) => action === "tag.move", changed: () => undefined });
    expect(await r2Calls("moves")).toBe(idle + 1);
    // The first listener is still not told of what it does not want.
    expect(heard.filter((action) => action === "tag.move")).toEqual([]);
  });

  it("a delete of nothing is no change: nobody is told", async () => {
    const log = listen();
    const missing = `sha256:${"0".repeat(64)}`;
    expect((await as("alice", `/v2/seam/none/manifests/${missing}`, { method: "DELETE" })).status).toBe(404);
    expect((await as("alice", "/v2/seam/none/manifests/nope", { method: "DELETE" })).status).toBe(404);
    expect((await as("alice", `/v2/seam/none/blobs/${missing}`, { method: "DELETE" })).status).toBe(404);
    expect(log.heard).toEqual([]);
  });

  it("a policy that refuses a change stops it before anything is written", async () => {
    const first = await image("alice", "seam/guarded", "v1", "guarded");
    const log = listen();
    changeHooks.policies.push({
      name: "no moving v1",
      check: (change) => {
        if (change.action === "tag.move" && change.tag === "v1") throw new RegistryError("DENIED", "v1 is immutable");
      },
    });
    changeHooks.policies.push({
      name: "no deleting",
      check: (change) => {
        if (change.action === "manifest.delete" || change.action === "tag.delete") {
          throw new RegistryError("DENIED", "nothing is deleted here");
        }
      },
    });
    const config = utf8(JSON.stringify({ architecture: "amd64", os: "linux", seed: "refused" }));
    const configDigest = await upload("alice", "seam/guarded", config);
    const other = utf8(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaTypes.ociManifest,
        config: { mediaType: MediaTypes.ociConfig, digest: configDigest, size: config.byteLength },
        layers: [],
      }),
    );
    const refused = await as("alice", "/v2/seam/guarded/manifests/v1", {
      method: "PUT",
      headers: { "Content-Type": MediaTypes.ociManifest },
      body: other,
    });
    expect(refused.status).toBe(403);
    expect(await refused.text()).toMatch(/v1 is immutable/);
    // Nothing of the refused push was written: the tag, and no revision of the other manifest.
    const current = await as("alice", "/v2/seam/guarded/manifests/v1", { method: "HEAD" });
    expect(current.headers.get("Docker-Content-Digest")).toBe(first.digest);
    expect((await as("alice", `/v2/seam/guarded/manifests/${await sha256(other)}`, { method: "HEAD" })).status).toBe(
      404,
    );
    expect((await env.BLOBS.list({ prefix: "repositories/seam/guarded/_manifests/revisions/" })).objects).toHaveLength(
      1,
    );
    // Deletes refused, and the manifest still there.
    expect((await as("alice", "/v2/seam/guarded/manifests/v1", { method: "DELETE" })).status).toBe(403);
    expect((await as("alice", `/v2/seam/guarded/manifests/${first.digest}`, { method: "DELETE" })).status).toBe(403);
    expect((await as("alice", "/v2/seam/guarded/manifests/v1", { method: "HEAD" })).status).toBe(200);
    // Listeners heard the blob commit only: no refused change is told.
    expect(summary(log.heard).map((entry) => entry.action)).toEqual(["blob.commit"]);
  });
  it("a policy that let a change through is told when a later policy refuses it", async () => {
    const abandoned: string[] = [];
    changeHooks.policies.push({
      name: "reserving",
      check: () => {},
      abandoned: (change) => {
        abandoned.push(change.action);
      },
    });
    changeHooks.policies.push({
      name: "refusing manifests",
      check: (change) => {
        if (change.action === "manifest.put") throw new RegistryError("DENIED", "no manifests today");
      },
    });
    const refused = await image("alice", "seam/abandoned", "v1", "abandoned").catch((error: unknown) => error);
    expect(String(refused)).toMatch(/403|no manifests today/);
    // The blob commits went through (nothing abandoned); the manifest put was refused by the
    // second policy, and the first, which had let it through, was told.
    expect(abandoned).toEqual(["manifest.put"]);
  });
});
