import { createExecutionContext, env, waitOnExecutionContext } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import worker from "../../src/index";
import { changeSeamOf } from "../../src/registry/changes";
import { PullRecorder, pullRecordsSettled } from "../../src/registry/pull-recorder";
import { PullRecords, type PullCount } from "../../src/registry/pull-records";
import { collect } from "./gc-helpers";
import { MediaTypes, pushImageWith } from "./helpers";

// Pull records (src/registry/pull-recorder.ts, pull-records.ts; docs/architecture.md "Pull
// records"): when each manifest was last pulled and how often, written at most once per
// manifest and PULL_RECORD_INTERVAL by an isolate, after the answer; and the retention
// rule that reads them (RETENTION `pulledWithin`: vitest.config.ts gives gc-pulls/** 1s).

const DAY = 86_400_000;

/** A request through the Worker's fetch handler, its background work (the record's write) done. */
async function request(path: string, init: RequestInit = {}, settings: Env = env): Promise<Response> {
  const ctx = createExecutionContext();
  const response = await worker.fetch(new Request(new URL(path, "http://registry.test"), init), settings, ctx);
  await waitOnExecutionContext(ctx);
  await pullRecordsSettled();
  return response;
}

function push(name: string, reference: string, settings: Env = env) {
  return pushImageWith((path, init) => request(path, init, settings), name, reference);
}

async function pull(name: string, reference: string, method = "GET", settings: Env = env): Promise<void> {
  const response = await request(
    `/v2/${name}/manifests/${reference}`,
    { method, headers: { Accept: MediaTypes.ociManifest } },
    settings,
  );
  expect(response.status).toBe(200);
  await response.arrayBuffer();
}

/** The manifest's row, read from D1 directly. */
function row(repository: string, digest: string) {
  return env.AUDIT.prepare("SELECT last_pulled, pulls FROM pulls WHERE repository = ? AND digest = ?")
    .bind(repository, digest)
    .first<{ last_pulled: number; pulls: number }>();
}

/** The table's writes, each call's rows kept: what "a write" is counted by. */
class CountingRecords extends PullRecords {
  readonly writes: PullCount[][] = [];
  override async write(counts: readonly PullCount[], forgotten: readonly { repository: string; digest: string }[]) {
    this.writes.push([...counts]);
    await super.write(counts, forgotten);
  }
}

describe("recording pulls", () => {
  it("an isolate writes a manifest's record at most once per interval; the next write adds the pulls counted between", async () => {
    const records = new CountingRecords(env.AUDIT);
    let now = Date.UTC(2026, 4, 1);
    const recorder = new PullRecorder(records, 60_000, () => now);
    const start = now;
    const a = "sha256:" + "a".repeat(64);
    const b = "sha256:" + "b".repeat(64);

    // The first pull is due (a promise: the write); the nine after it, within the interval, cost nothing.
    const first = recorder.pulled("pulls/unit", a);
    expect(first).toBeInstanceOf(Promise);
    for (let second = 1; second <= 9; second++) {
      now = start + second * 1000;
      expect(recorder.pulled("pulls/unit", a)).toBeUndefined();
    }
    // Another manifest has its own record.
    expect(recorder.pulled("pulls/unit", b)).toBeInstanceOf(Promise);
    await pullRecordsSettled();
    expect(await row("pulls/unit", a)).toEqual({ last_pulled: start, pulls: 1 });

    // Still within the interval: counted, not written.
    now = start + 59_999;
    expect(recorder.pulled("pulls/unit", a)).toBeUndefined();
    // The interval has passed: the eleventh pull writes, adding the ten counted since the first write.
    now = start + 60_000;
    expect(recorder.pulled("pulls/unit", a)).toBeInstanceOf(Promise);
    await pullRecordsSettled();
    expect(await row("pulls/unit", a)).toEqual({ last_pulled: start + 60_000, pulls: 12 });
    expect(await row("pulls/unit", b)).toEqual({ last_pulled: start + 9000, pulls: 1 });

    // Twelve pulls of a, one of b: two writes of a's row, one of b's, in two D1 calls.
    const written = records.writes.flat().map((count) => `${count.digest.slice(7, 8)} +${count.count}`);
    expect(written).toEqual(["a +1", "b +1", "a +11"]);
    expect(records.writes).toHaveLength(2);
  });

  it("a GET of a manifest is recorded after the answer; a HEAD is no pull, and a blob pull is not told to the recorder", async () => {
    const image = await push("pulls/app", "v1");
    await pull("pulls/app", "v1", "HEAD");
    expect(await row("pulls/app", image.digest)).toBeNull();
    expect(changeSeamOf(env).watches("blob.pull")).toBe(false);
    expect(changeSeamOf(env).watches("manifest.pull")).toBe(true);

    const before = Date.now();
    await pull("pulls/app", "v1");
    const recorded = await row("pulls/app", image.digest);
    expect(recorded?.pulls).toBe(1);
    expect(recorded?.last_pulled).toBeGreaterThanOrEqual(before);
    // By digest: the same manifest, within the interval (a day): counted in memory, not written.
    await pull("pulls/app", image.digest);
    expect(await row("pulls/app", image.digest)).toEqual(recorded);
  });

  it("one write deletes the forgotten manifests' rows before it adds counts (a manifest pushed again starts afresh)", async () => {
    const records = new PullRecords(env.AUDIT);
    const digests = ["c", "d", "e"].map((letter) => `sha256:${letter.repeat(64)}`);
    await records.write(digests.map((digest) => ({ repository: "pulls/rows", digest, time: 1000, count: 5 })));
    const [c = "", d = "", e = ""] = digests;
    await records.write(
      [{ repository: "pulls/rows", digest: c, time: 2000, count: 1 }],
      [
        { repository: "pulls/rows", digest: c },
        { repository: "pulls/rows", digest: d },
      ],
    );
    expect(await row("pulls/rows", c)).toEqual({ last_pulled: 2000, pulls: 1 });
    expect(await row("pulls/rows", d)).toBeNull();
    expect(await row("pulls/rows", e)).toEqual({ last_pulled: 1000, pulls: 5 });
    expect([...(await records.of("pulls/rows", [c, d, e, c])).keys()].sort()).toEqual([c, e]);
  });

  it("a deleted manifest's record is deleted", async () => {
    const image = await push("pulls/deleted", "v1");
    await pull("pulls/deleted", "v1");
    expect((await row("pulls/deleted", image.digest))?.pulls).toBe(1);
    const deleted = await request(`/v2/pulls/deleted/manifests/${image.digest}`, { method: "DELETE" });
    expect(deleted.status).toBe(202);
    await pullRecordsSettled();
    expect(await row("pulls/deleted", image.digest)).toBeNull();
  });

  it("PULL_RECORD_INTERVAL=off records nothing: no pull listener, so a pull costs what it did", async () => {
    const off = { ...env, PULL_RECORD_INTERVAL: "off", RETENTION: "" } as Env;
    expect(changeSeamOf(off).pullListeners.map((listener) => listener.name)).not.toContain("pull-records");
    expect(changeSeamOf(off).watches("manifest.pull")).toBe(false);
    const image = await push("pulls/off", "v1", off);
    await pull("pulls/off", "v1", "GET", off);
    expect(await row("pulls/off", image.digest)).toBeNull();
  });

  it("the repository page shows when each tag's manifest was last pulled and how often", async () => {
    const pulled = await push("pulls/page", "pulled");
    await push("pulls/page", "never");
    await pull("pulls/page", "pulled");
    const page = await (await request("/repositories/pulls/page")).text();
    const rowOf = (tag: string) => new RegExp(`<tr data-tag="${tag}">.*?</tr>`, "s").exec(page)?.[0] ?? "";
    expect(page).toContain("Last pulled");
    expect(rowOf("pulled")).toMatch(/<td class="optional last-pulled"><time datetime="[^"]+">/);
    expect(rowOf("pulled")).toContain('<td class="num pulls">1</td>');
    expect(rowOf("never")).toContain('<td class="optional last-pulled">never</td>');
    expect(rowOf("never")).toContain('<td class="num pulls">0</td>');
    expect(pulled.digest).toMatch(/^sha256:/);
  });
});

describe("retention by last pull (RETENTION pulledWithin)", () => {
  it("of two tags the one pulled recently stays and the other goes; a tag just pushed stays; a dry run lists them first", async () => {
    const name = "gc-pulls/app";
    const recent = await push(name, "recent");
    const stale = await push(name, "stale");
    const unpulled = await push(name, "unpulled");
    // The stale tag's manifest was last pulled two days ago (longer than pulledWithin plus the interval, a day).
    await env.AUDIT.prepare("INSERT INTO pulls (repository, digest, last_pulled, pulls) VALUES (?, ?, ?, ?)")
      .bind(name, stale.digest, Date.now() - 2 * DAY, 7)
      .run();
    // pulledWithin is 1s: the three pushes are older than that by the run; "fresh" is not.
    await new Promise((resolve) => setTimeout(resolve, 1100));
    await pull(name, "recent");
    const fresh = await push(name, "fresh");

    const dry = await collect({ dryRun: true });
    const tagsIn = (run: typeof dry) =>
      (run.items ?? []).filter((item) => item.kind === "tag").map((item) => item.name);
    expect(tagsIn(dry).sort()).toEqual([`${name}:stale`, `${name}:unpulled`]);
    const tags = async () => ((await (await request(`/v2/${name}/tags/list`)).json()) as { tags: string[] }).tags;
    expect((await tags()).sort()).toEqual(["fresh", "recent", "stale", "unpulled"]);

    const run = await collect({});
    expect(tagsIn(run).sort()).toEqual(tagsIn(dry).sort());
    expect(run.removed.manifests).toBe(2);
    expect((await tags()).sort()).toEqual(["fresh", "recent"]);
    await pull(name, "recent");
    await pull(name, fresh.digest);
    // The collector's removal of a manifest deletes its record.
    await pullRecordsSettled();
    expect(await row(name, stale.digest)).toBeNull();
    expect(await row(name, unpulled.digest)).toBeNull();
    expect((await row(name, recent.digest))?.pulls).toBeGreaterThanOrEqual(1);
  });
});
