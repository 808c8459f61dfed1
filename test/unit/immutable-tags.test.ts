import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { changeHooks, type ChangePolicy } from "../../src/registry/changes";
import { parseImmutableTags } from "../../src/settings/immutable";
import { SettingsError } from "../../src/settings/values";
import { collect } from "./gc-helpers";
import { expectError, imageManifest, MediaTypes, pushImage, putManifest, registry, sha256, utf8 } from "./helpers";

/**
 * Immutable tags (src/policies/immutable-tags.ts): vitest.config.ts makes `v*` immutable
 * in immutable/** except `v*-dev`, and retention keeps one tag in immutable/gc/**.
 */

async function digestOfTag(name: string, tag: string): Promise<string | null> {
  const response = await registry(`/v2/${name}/manifests/${tag}`, {
    method: "HEAD",
    headers: { Accept: MediaTypes.ociManifest },
  });
  return response.status === 200 ? response.headers.get("Docker-Content-Digest") : null;
}

describe("IMMUTABLE_TAGS", () => {
  it("parses rules and refuses what is not one", () => {
    const rules = parseImmutableTags(
      JSON.stringify([{ repositories: ["team/**"], tags: ["v*"], except: ["latest", "sha256-*"] }]),
    );
    expect(rules.ruleFor("team/app", "v1.2")?.where).toBe("IMMUTABLE_TAGS[0]");
    expect(rules.ruleFor("team/a/b", "v1")).toBeDefined();
    expect(rules.ruleFor("team/app", "latest")).toBeUndefined();
    expect(rules.ruleFor("other/app", "v1")).toBeUndefined();
    expect(rules.covers("team/app")).toBe(true);
    expect(rules.covers("teamwork/app")).toBe(false);
    expect(parseImmutableTags("").any).toBe(false);
    for (const bad of [
      "{",
      "{}",
      "[1]",
      JSON.stringify([{ repositories: ["a/**"] }]),
      JSON.stringify([{ repositories: [], tags: ["v*"] }]),
      JSON.stringify([{ repositories: ["a/**"], tags: ["v*"], except: [3] }]),
      JSON.stringify([{ repositories: ["a/**"], tags: ["v*"], moving: true }]),
    ]) {
      expect(() => parseImmutableTags(bad), bad).toThrow(SettingsError);
    }
  });
});

describe("immutable tags", () => {
  it("refuses to move or delete an immutable tag; the same manifest again is fine; others move", async () => {
    const name = "immutable/app";
    const first = await pushImage(name, "v1");
    // The same manifest again (a client's retry): accepted.
    const again = await putManifest(name, "v1", first.bytes, MediaTypes.ociManifest);
    expect(again.status).toBe(201);
    // Another manifest: DENIED, naming the rule, and the tag unchanged.
    const other = await imageManifest(name);
    const refused = await putManifest(name, "v1", other, MediaTypes.ociManifest);
    expect(refused.status).toBe(403);
    const body = (await refused.json()) as { errors: { code: string; message: string }[] };
    expect(body.errors[0]?.code).toBe("DENIED");
    expect(body.errors[0]?.message).toMatch(/tag "v1" of immutable\/app is immutable \(IMMUTABLE_TAGS\[0\]/);
    expect(await digestOfTag(name, "v1")).toBe(first.digest);
    // Tags outside the rule move freely: latest, and v1-dev (an exception).
    await pushImage(name, "latest");
    const moved = await pushImage(name, "latest");
    expect(await digestOfTag(name, "latest")).toBe(moved.digest);
    await pushImage(name, "v1-dev");
    const dev = await pushImage(name, "v1-dev");
    expect(await digestOfTag(name, "v1-dev")).toBe(dev.digest);
    // Deletes: the tag, and the manifest it names, refused; the tag still names it.
    await expectError(await registry(`/v2/${name}/manifests/v1`, { method: "DELETE" }), 403, "DENIED");
    await expectError(await registry(`/v2/${name}/manifests/${first.digest}`, { method: "DELETE" }), 403, "DENIED");
    expect(await digestOfTag(name, "v1")).toBe(first.digest);
    // A tag a push sets with ?tag= is judged too, and nothing of a refused push is tagged.
    const extra = await imageManifest(name);
    const bytes = utf8(JSON.stringify(extra));
    const both = await registry(`/v2/${name}/manifests/${await sha256(bytes)}?tag=v1&tag=latest`, {
      method: "PUT",
      headers: { "Content-Type": MediaTypes.ociManifest },
      body: bytes,
    });
    expect(both.status).toBe(403);
    expect(await digestOfTag(name, "latest")).toBe(moved.digest);
    // The same names outside immutable/** are ordinary tags.
    await pushImage("mutable/app", "v1");
    const free = await pushImage("mutable/app", "v1");
    expect(await digestOfTag("mutable/app", "v1")).toBe(free.digest);
    expect((await registry(`/v2/mutable/app/manifests/v1`, { method: "DELETE" })).status).toBe(202);
  });

  it("of 16 concurrent pushes of different manifests to a new immutable tag, exactly one wins", async () => {
    const name = "immutable/race";
    const manifests = await Promise.all(Array.from({ length: 16 }, () => imageManifest(name)));
    // A barrier after the policies: every push has been checked (and found no v2) before
    // any writes, so only the write's own condition can pick the winner.
    let arrived = 0;
    let release: () => void = () => {};
    const allChecked = new Promise<void>((resolve) => (release = resolve));
    const barrier: ChangePolicy = {
      name: "barrier",
      check: async (change) => {
        if (change.action !== "manifest.put" || change.repository !== name) return;
        if (++arrived === manifests.length) release();
        await Promise.race([allChecked, new Promise((resolve) => setTimeout(resolve, 5_000))]);
      },
    };
    changeHooks.policies.push(barrier);
    const answers = await Promise.all(
      manifests.map((manifest) => putManifest(name, "v2", manifest, MediaTypes.ociManifest)),
    ).finally(() => changeHooks.policies.splice(changeHooks.policies.indexOf(barrier), 1));
    expect(arrived).toBe(16);
    const statuses = answers.map((answer) => answer.status);
    expect(statuses.filter((status) => status === 201)).toHaveLength(1);
    expect(statuses.filter((status) => status === 403)).toHaveLength(15);
    const winner = answers.find((answer) => answer.status === 201)?.headers.get("Docker-Content-Digest");
    expect(await digestOfTag(name, "v2")).toBe(winner);
    for (const answer of answers.filter((answer) => answer.status === 403)) {
      const body = (await answer.json()) as { errors: { code: string; message: string }[] };
      expect(body.errors[0]?.code).toBe("DENIED");
      expect(body.errors[0]?.message).toMatch(/"v2" of immutable\/race is immutable/);
    }
  });

  it("the collector's retention never removes an immutable tag, and a dry run does not list it", async () => {
    const name = "immutable/gc/app";
    const released = await pushImage(name, "v1");
    await pushImage(name, "nightly");
    await new Promise((resolve) => setTimeout(resolve, 5));
    const newest = await pushImage(name, "edge");
    const dry = await collect({ dryRun: true });
    const dryTags = (dry.items ?? []).filter((item) => item.kind === "tag").map((item) => item.name);
    expect(dryTags).toContain(`${name}:nightly`);
    expect(dryTags).not.toContain(`${name}:v1`);
    const run = await collect({});
    const tags = (run.items ?? []).filter((item) => item.kind === "tag").map((item) => item.name);
    expect(tags).toContain(`${name}:nightly`);
    expect(tags).not.toContain(`${name}:v1`);
    expect(await digestOfTag(name, "v1")).toBe(released.digest);
    expect(await digestOfTag(name, "edge")).toBe(newest.digest);
    expect(await digestOfTag(name, "nightly")).toBeNull();
    expect(env.IMMUTABLE_TAGS).toContain("immutable/**");
  });
});
