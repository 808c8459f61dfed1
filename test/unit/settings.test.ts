/// <reference types="vite/client" />
import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import configurationDoc from "../../docs/configuration.md?raw";
import { parseSettings, SETTING_NAMES, settingsOf } from "../../src/settings/settings";
import { SettingsError } from "../../src/settings/values";
import worker from "../../src/index";
import { createExecutionContext } from "cloudflare:test";

// The settings module (src/settings): every setting parsed once, a bad one refused by name,
// and docs/configuration.md naming every one of them.

const sources = import.meta.glob<string>("../../src/settings/*.ts", { query: "?raw", import: "default", eager: true });

function refusal(settings: Record<string, string | undefined>): string {
  try {
    parseSettings({ ...env, ...settings } as Env);
  } catch (error) {
    expect(error).toBeInstanceOf(SettingsError);
    return (error as Error).message;
  }
  throw new Error("accepted");
}

describe("settings", () => {
  it("docs/configuration.md documents every setting the settings module reads, and it reads every one it lists", () => {
    const read = new Set(
      Object.values(sources).flatMap((text) => [...text.matchAll(/\benv\.([A-Z][A-Z0-9_]+)/g)].map((m) => m[1] ?? "")),
    );
    expect([...read].sort()).toEqual([...SETTING_NAMES].sort());
    const undocumented = SETTING_NAMES.filter((name) => !configurationDoc.includes(`\`${name}\``));
    expect(undocumented).toEqual([]);
  });

  it("parses each setting once per environment object", () => {
    const settings = { ...env } as Env;
    expect(settingsOf(settings)).toBe(settingsOf(settings));
  });

  it("refuses a setting it cannot follow, naming it", () => {
    expect(refusal({ UPLOAD_PART_SIZE: "12abc" })).toMatch(/UPLOAD_PART_SIZE/);
    expect(refusal({ UPLOAD_PART_SIZE: "1024" })).toMatch(/UPLOAD_PART_SIZE.*from 5242880/);
    expect(refusal({ MANIFEST_MAX_TAGS: "0" })).toMatch(/MANIFEST_MAX_TAGS/);
    expect(refusal({ DELETE_ENABLED: "maybe" })).toMatch(/DELETE_ENABLED/);
    expect(refusal({ EDGE_LINK_TTL_SECONDS: "-1" })).toMatch(/EDGE_LINK_TTL_SECONDS/);
    expect(refusal({ RETENTION: "[{" })).toMatch(/RETENTION is not valid JSON/);
    expect(refusal({ RETENTION: '[{"repositories":"a/**","keepTags":"x"}]' })).toMatch(/RETENTION\[0\]\.keepTags/);
    expect(refusal({ AUTH_ACCESS: "{" })).toMatch(/AUTH_ACCESS/);
    expect(refusal({ UPSTREAMS: "{" })).toMatch(/UPSTREAMS/);
    expect(refusal({ BLOB_REDIRECT_MIN_BYTES: "1000" })).toMatch(/R2_ENDPOINT/);
    expect(refusal({ LOGIN_LOCKOUT_SECONDS: "ten" })).toMatch(/LOGIN_LOCKOUT_SECONDS/);
  });

  it("PULL_RECORD_INTERVAL: a duration, a day by default; off or 0 records no pulls, which pulledWithin cannot do without", () => {
    const interval = (text: string | undefined) =>
      parseSettings({ ...env, RETENTION: "", PULL_RECORD_INTERVAL: text } as Env).pullRecordIntervalSeconds;
    expect(interval(undefined)).toBe(86_400);
    expect(interval("12h")).toBe(43_200);
    expect(interval("90")).toBe(90);
    expect(interval("off")).toBeNull();
    expect(interval("0")).toBeNull();
    expect(refusal({ PULL_RECORD_INTERVAL: "soon" })).toMatch(/PULL_RECORD_INTERVAL/);
    expect(refusal({ PULL_RECORD_INTERVAL: "31d" })).toMatch(/PULL_RECORD_INTERVAL.*30 days/);
    const rules = '[{"repositories":"a/**","keepTags":1},{"repositories":"b/**","pulledWithin":"30d"}]';
    expect(refusal({ PULL_RECORD_INTERVAL: "off", RETENTION: rules })).toMatch(
      /RETENTION\[1\]\.pulledWithin needs pull records/,
    );
    expect(refusal({ RETENTION: '[{"repositories":"a/**","pulledWithin":"soon"}]' })).toMatch(
      /RETENTION\[0\]\.pulledWithin/,
    );
  });

  it("a broken setting is one clear error for every request, never a guess", async () => {
    const broken = { ...env, MANIFEST_MAX_REFERENCES: "lots" } as Env;
    const response = await worker.fetch(new Request("http://registry.test/v2/"), broken, createExecutionContext());
    expect(response.status).toBe(500);
    const body = (await response.json()) as { errors: { message: string }[] };
    expect(body.errors[0]?.message).toMatch(/^settings: MANIFEST_MAX_REFERENCES/);
  });

  it("takes the documented defaults when a setting is unset", () => {
    const bare = Object.fromEntries(
      Object.entries(env).filter(([name]) => !(SETTING_NAMES as readonly string[]).includes(name)),
    ) as Env;
    const settings = parseSettings({ ...bare, AUTH_MODE: "open" } as Env);
    expect(settings.uploadPartSize).toBe(16 * 1024 * 1024);
    expect(settings.deleteEnabled).toBe(true);
    expect(settings.mountWithoutFrom).toBe(false);
    expect(settings.maxChunkLength).toBeUndefined();
    expect(settings.edgeLinkTtlSeconds).toBe(60);
    expect(settings.gc.graceSeconds).toBe(86_400);
    expect(settings.logins).toEqual({
      maxFailures: 5,
      maxFailuresPerAddress: 20,
      lockoutSeconds: 10,
      maxLockoutSeconds: 900,
    });
    expect(settings.blobRedirect).toBeNull();
    expect(settings.mirrors.upstreams).toEqual([]);
  });
});
