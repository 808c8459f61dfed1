import { beforeAll, describe, expect, it } from "vitest";
import { BASE, expectError, pushBlob, registry, utf8 } from "./helpers";

// Storage is isolated per test file, so this file's catalog holds exactly these repositories.
const REPOSITORIES = ["zeta", "alpha/one", "alpha", "mid/b/c", "alpha-two", "beta", "alpha/one/deeper"];
const SORTED = [...REPOSITORIES].sort();

function nextLink(response: Response): string | null {
  const link = response.headers.get("Link");
  if (link === null) return null;
  const match = /^<([^>]+)>;\s*rel="next"$/.exec(link);
  expect(match, `Link header ${link}`).not.toBeNull();
  return match?.[1] ?? null;
}

async function repositories(response: Response): Promise<string[]> {
  expect(response.status).toBe(200);
  return ((await response.clone().json()) as { repositories: string[] }).repositories;
}

describe("GET /v2/_catalog", () => {
  beforeAll(async () => {
    for (const name of REPOSITORIES) await pushBlob(name, utf8(`a blob in ${name}`));
  });

  it("lists every repository in lexical order", async () => {
    const response = await registry("/v2/_catalog");
    expect(response.headers.get("Link")).toBeNull();
    expect(await response.json()).toEqual({ repositories: SORTED });
  });

  it("lists a repository once however many blobs it holds", async () => {
    await pushBlob("beta", utf8("a second blob in beta"));
    expect(await repositories(await registry("/v2/_catalog"))).toEqual(SORTED);
  });

  it('n limits the page and a Link header (rel="next") leads through every page in order', async () => {
    const first = await registry("/v2/_catalog?n=3");
    expect(await repositories(first)).toEqual(SORTED.slice(0, 3));
    const url = new URL(nextLink(first) ?? "", BASE);
    expect(url.pathname).toBe("/v2/_catalog");
    expect(url.searchParams.get("n")).toBe("3");
    expect(url.searchParams.get("last")).toBe(SORTED[2]);

    const collected: string[] = [];
    let next: string | null = "/v2/_catalog?n=3";
    while (next !== null) {
      const response = await registry(next);
      collected.push(...(await repositories(response)));
      next = nextLink(response);
    }
    expect(collected).toEqual(SORTED);
  });

  it("last returns the repositories after it", async () => {
    const last = SORTED[1] ?? "";
    expect(await repositories(await registry(`/v2/_catalog?last=${last}`))).toEqual(SORTED.slice(2));
  });

  it("n=0 returns an empty list", async () => {
    expect(await repositories(await registry("/v2/_catalog?n=0"))).toEqual([]);
  });

  it("n=abc gives 400 with an OCI error", async () => {
    await expectError(await registry("/v2/_catalog?n=abc"), 400);
  });
});
