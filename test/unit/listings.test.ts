import { beforeAll, describe, expect, it } from "vitest";
import { BASE, expectError, imageManifest, pushManifest, registry } from "./helpers";

interface TagList {
  name: string;
  tags: string[];
}

/** Pushes one image under every tag, in the order given. */
async function tagRepository(name: string, tags: string[]): Promise<void> {
  const manifest = await imageManifest(name);
  for (const tag of tags) await pushManifest(name, tag, manifest);
}

/** The target of a `Link: <url>; rel="next"` header, or null when there is none. */
function nextLink(response: Response): string | null {
  const link = response.headers.get("Link");
  if (link === null) return null;
  const match = /^<([^>]+)>;\s*rel="next"$/.exec(link);
  expect(match, `Link header ${link}`).not.toBeNull();
  return match?.[1] ?? null;
}

const TAGS = ["v2", "latest", "1.0", "v10", "beta", "Alpha", "1.0.1", "_private", "v1"];
const SORTED = [...TAGS].sort();

describe("GET /v2/<name>/tags/list", () => {
  it("lists the repository's tags in lexical order", async () => {
    const name = "tags/sorted";
    await tagRepository(name, TAGS);
    const response = await registry(`/v2/${name}/tags/list`);
    expect(response.status).toBe(200);
    expect(response.headers.get("Content-Type")).toContain("application/json");
    expect(response.headers.get("Link")).toBeNull();
    expect(await response.json()).toEqual({ name, tags: SORTED });
  });

  it("returns 404 NAME_UNKNOWN for a repository never pushed, whatever its query says", async () => {
    await expectError(await registry("/v2/tags/never-pushed/tags/list"), 404, "NAME_UNKNOWN");
    await expectError(await registry("/v2/tags/never-pushed/tags/list?n=abc"), 404, "NAME_UNKNOWN");
    await expectError(await registry("/v2/tags/never-pushed/tags/list?last=zzz"), 404, "NAME_UNKNOWN");
  });

  it("reads one R2 listing for a repository with tags (no catalog read)", async () => {
    const name = "tags/one-read";
    await tagRepository(name, ["v1"]);
    const response = await registry(`/v2/${name}/tags/list`);
    expect(await response.json()).toEqual({ name, tags: ["v1"] });
    expect(response.headers.get("Server-Timing")).toMatch(/^r2;dur=[\d.]+;desc="1",/);
  });

  it("does not list another repository's tags, even one whose name extends this one", async () => {
    await tagRepository("tags/prefix", ["mine"]);
    await tagRepository("tags/prefix-longer", ["theirs"]);
    await tagRepository("tags/prefix/nested", ["nested"]);
    expect(await (await registry("/v2/tags/prefix/tags/list")).json()).toEqual({ name: "tags/prefix", tags: ["mine"] });
  });

  it("no longer lists a deleted tag", async () => {
    const name = "tags/deleted";
    await tagRepository(name, ["keep", "drop"]);
    expect((await registry(`/v2/${name}/manifests/drop`, { method: "DELETE" })).status).toBe(202);
    expect(await (await registry(`/v2/${name}/tags/list`)).json()).toEqual({ name, tags: ["keep"] });
  });
});

describe("tags list pagination (n and last)", () => {
  const name = "tags/paged";
  beforeAll(async () => {
    await tagRepository(name, TAGS);
  });

  it('n limits the page and a Link header (rel="next") leads through every page in order', async () => {
    const first = await registry(`/v2/${name}/tags/list?n=4`);
    expect(first.status).toBe(200);
    expect(((await first.clone().json()) as TagList).tags).toEqual(SORTED.slice(0, 4));
    const link = nextLink(first);
    expect(link).not.toBeNull();
    const url = new URL(link ?? "", BASE);
    expect(url.pathname).toBe(`/v2/${name}/tags/list`);
    expect(url.searchParams.get("n")).toBe("4");
    expect(url.searchParams.get("last")).toBe(SORTED[3]);

    const collected: string[] = [];
    let next: string | null = `/v2/${name}/tags/list?n=4`;
    let pages = 0;
    while (next !== null) {
      const response = await registry(next);
      expect(response.status).toBe(200);
      const page = (await response.clone().json()) as TagList;
      expect(page.tags.length).toBeLessThanOrEqual(4);
      collected.push(...page.tags);
      next = nextLink(response);
      pages += 1;
    }
    expect(pages).toBe(Math.ceil(SORTED.length / 4));
    expect(collected).toEqual(SORTED);
  });

  it("last returns the tags after it", async () => {
    const last = SORTED[2] ?? "";
    const response = await registry(`/v2/${name}/tags/list?last=${last}`);
    expect(await response.json()).toEqual({ name, tags: SORTED.slice(3) });
  });

  it("n and last together return the page after last", async () => {
    const response = await registry(`/v2/${name}/tags/list?n=2&last=${SORTED[0] ?? ""}`);
    expect(((await response.json()) as TagList).tags).toEqual(SORTED.slice(1, 3));
  });

  it("a last page exactly n long has no Link header", async () => {
    const response = await registry(`/v2/${name}/tags/list?n=3&last=${SORTED[SORTED.length - 4] ?? ""}`);
    expect(((await response.json()) as TagList).tags).toEqual(SORTED.slice(-3));
    expect(response.headers.get("Link")).toBeNull();
  });

  it("n larger than the number of tags returns them all without a Link header", async () => {
    const response = await registry(`/v2/${name}/tags/list?n=100`);
    expect(response.headers.get("Link")).toBeNull();
    expect(await response.json()).toEqual({ name, tags: SORTED });
  });

  it("n=0 returns an empty list", async () => {
    const response = await registry(`/v2/${name}/tags/list?n=0`);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ name, tags: [] });
  });

  it("last after the final tag returns an empty list", async () => {
    const response = await registry(`/v2/${name}/tags/list?last=zzz`);
    expect(await response.json()).toEqual({ name, tags: [] });
  });

  it.each(["abc", "-1", "1.5"])("n=%s gives 400 with an OCI error", async (n) => {
    await expectError(await registry(`/v2/${name}/tags/list?n=${n}`), 400);
  });
});
