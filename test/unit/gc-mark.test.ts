import { describe, expect, it } from "vitest";
import {
  markRepository,
  type ListedLink,
  type ListedRevision,
  type ListedTag,
  type ManifestReferences,
  type MarkOptions,
  type RepositoryListing,
} from "../../src/gc/mark";
import { ruleFor } from "../../src/gc/retention";
import { parseRetention } from "../../src/settings/retention";

/**
 * The mark (src/gc/mark.ts) as a pure function of what a run listed: literal listings
 * in, the decision out, no storage. Digests are labels here ("m1" a manifest, "l1" a
 * blob): the mark compares them, never parses them.
 */

const MINUTE = 60_000;
const NOW = Date.UTC(2026, 0, 10);
/** Grace: one minute (links and untagged manifests written within it stay). */
const CUTOFF = NOW - MINUTE;
const OLD = NOW - 60 * MINUTE;

function image(blobs: string[], extra: Partial<ManifestReferences> = {}): ManifestReferences {
  return { mediaType: "application/vnd.oci.image.manifest.v1+json", subject: null, children: [], blobs, ...extra };
}

function index(children: string[]): ManifestReferences {
  return { mediaType: "application/vnd.oci.image.index.v1+json", subject: null, children, blobs: [] };
}

function revision(digest: string, references: ManifestReferences | null, uploaded = OLD): ListedRevision {
  return { digest, uploaded, references };
}

function tag(name: string, digest: string, uploaded = OLD): ListedTag {
  return { tag: name, digest, uploaded };
}

function links(...digests: string[]): ListedLink[] {
  return digests.map((digest) => ({ digest, uploaded: OLD }));
}

function listing(parts: Partial<RepositoryListing>): RepositoryListing {
  return { tags: [], revisions: [], links: [], unsure: false, ...parts };
}

/** Options under a retention rule (RETENTION's JSON for one rule), or none. */
function options(rule?: Record<string, unknown>, extra: Partial<MarkOptions> = {}): MarkOptions {
  const rules = rule ? parseRetention(JSON.stringify([{ repositories: "**", ...rule }])) : [];
  return { rule: ruleFor(rules, "any/repository"), startedMs: NOW, cutoff: CUTOFF, ...extra };
}

const sorted = (set: Set<string>) => [...set].sort();

describe("mark: what nothing uses", () => {
  it("without a rule, a tagged manifest and its blobs are kept, and a link no kept manifest uses goes", () => {
    const marks = markRepository(
      listing({
        tags: [tag("latest", "m1")],
        revisions: [revision("m1", image(["l1", "l2"]))],
        links: links("l1", "l2", "l3"),
      }),
      options(),
    );
    expect(sorted(marks.tags)).toEqual([]);
    expect(sorted(marks.manifests)).toEqual([]);
    expect(sorted(marks.links)).toEqual(["l3"]);
    expect(sorted(marks.inUse)).toEqual(["l1", "l2", "m1"]);
  });

  it("without a rule, untagged manifests are kept with everything they use", () => {
    const marks = markRepository(
      listing({ revisions: [revision("m1", image(["l1"]))], links: links("l1") }),
      options(),
    );
    expect(sorted(marks.manifests)).toEqual([]);
    expect(sorted(marks.links)).toEqual([]);
    expect(sorted(marks.inUse)).toEqual(["l1", "m1"]);
  });

  it("a link younger than the cutoff stays even if nothing uses it (a push uploads blobs before its manifest)", () => {
    const marks = markRepository(listing({ links: [{ digest: "l1", uploaded: CUTOFF }, ...links("l2")] }), options());
    expect(sorted(marks.links)).toEqual(["l2"]);
    expect(marks.inUse.has("l1")).toBe(true);
  });

  it("a manifest whose bytes could not be read is kept, and its repository loses no link this run", () => {
    const marks = markRepository(
      listing({
        revisions: [revision("m1", null)],
        links: links("l1", "l2"),
        unsure: true,
      }),
      options({ removeUntaggedOlderThan: "0s" }),
    );
    expect(sorted(marks.manifests)).toEqual([]);
    expect(sorted(marks.links)).toEqual([]);
    expect(sorted(marks.inUse)).toEqual(["l1", "l2", "m1"]);
  });

  it("a kept manifest's blob is in use even where the repository lost its link", () => {
    const marks = markRepository(
      listing({ tags: [tag("latest", "m1")], revisions: [revision("m1", image(["l1"]))] }),
      options(),
    );
    expect(marks.inUse.has("l1")).toBe(true);
  });

  it("foreign layers (left out of a manifest's blobs) never keep a link", () => {
    // ManifestReferences.blobs leaves out layers with urls: a link to one is unused.
    const marks = markRepository(
      listing({
        tags: [tag("latest", "m1")],
        revisions: [revision("m1", image(["l1"]))],
        links: links("l1", "foreign"),
      }),
      options(),
    );
    expect(sorted(marks.links)).toEqual(["foreign"]);
  });
});

describe("mark: retention", () => {
  const five = listing({
    tags: [1, 2, 3, 4, 5].map((n) => tag(`v${n}`, `m${n}`, OLD + n * MINUTE)),
    revisions: [1, 2, 3, 4, 5].map((n) => revision(`m${n}`, image([`l${n}`, "shared"]))),
    links: links("l1", "l2", "l3", "l4", "l5", "shared"),
  });

  it("keepTags keeps the newest tags; the others go, with manifests no tag names any more and their own links", () => {
    const marks = markRepository(five, options({ keepTags: 3 }));
    expect(sorted(marks.tags)).toEqual(["v1", "v2"]);
    expect(sorted(marks.manifests)).toEqual(["m1", "m2"]);
    // The blob the kept manifests share stays linked.
    expect(sorted(marks.links)).toEqual(["l1", "l2"]);
    expect(sorted(marks.inUse)).toEqual(["l3", "l4", "l5", "m3", "m4", "m5", "shared"]);
  });

  it("keepTagPatterns keep their tags, which take no place among the newest", () => {
    const marks = markRepository(five, options({ keepTags: 1, keepTagPatterns: ["v1"] }));
    expect(sorted(marks.tags)).toEqual(["v2", "v3", "v4"]);
    expect(sorted(marks.manifests)).toEqual(["m2", "m3", "m4"]);
  });

  it("removeTagsOlderThan removes the tags pushed before it, and keeps the rest", () => {
    // v1..v5 were pushed 59..55 minutes before the run.
    const marks = markRepository(five, options({ removeTagsOlderThan: 57 * 60 + 30 }));
    expect(sorted(marks.tags)).toEqual(["v1", "v2"]);
    expect(sorted(marks.manifests)).toEqual(["m1", "m2"]);
  });

  it("a manifest a removed tag named stays while another tag names it", () => {
    const marks = markRepository(
      listing({
        tags: [tag("old", "m1", OLD), tag("new", "m1", OLD + MINUTE)],
        revisions: [revision("m1", image(["l1"]))],
        links: links("l1"),
      }),
      options({ keepTags: 1 }),
    );
    expect(sorted(marks.tags)).toEqual(["old"]);
    expect(sorted(marks.manifests)).toEqual([]);
    expect(sorted(marks.links)).toEqual([]);
  });

  it("a tag whose record was unreadable ('' digest) is not ranked and never removed", () => {
    const marks = markRepository(
      listing({
        tags: [tag("broken", "", OLD + 9 * MINUTE), tag("a", "m1", OLD), tag("b", "m2", OLD + MINUTE)],
        revisions: [revision("m1", image([])), revision("m2", image([]))],
      }),
      options({ keepTags: 1 }),
    );
    expect(sorted(marks.tags)).toEqual(["a"]);
  });

  it("removeUntaggedOlderThan removes the untagged manifests pushed before it", () => {
    const marks = markRepository(
      listing({
        tags: [tag("latest", "m1")],
        revisions: [
          revision("m1", image(["l1"])),
          revision("old", image(["l2"]), OLD),
          revision("recent", image(["l3"]), NOW - 5 * MINUTE),
        ],
        links: links("l1", "l2", "l3"),
      }),
      options({ removeUntaggedOlderThan: "10m" }),
    );
    expect(sorted(marks.manifests)).toEqual(["old"]);
    expect(sorted(marks.links)).toEqual(["l2"]);
    expect(sorted(marks.inUse)).toEqual(["l1", "l3", "m1", "recent"]);
  });

  it("an untagged manifest younger than the cutoff stays whatever the rule (maybe a child pushed before its index)", () => {
    const marks = markRepository(
      listing({ revisions: [revision("old", image([]), OLD), revision("young", image([]), CUTOFF)] }),
      options({ removeUntaggedOlderThan: "0s" }),
    );
    expect(sorted(marks.manifests)).toEqual(["old"]);
  });

  it("a manifest a rule leaves untagged goes even when untagged ones are otherwise kept", () => {
    const marks = markRepository(
      listing({
        tags: [tag("v1", "m1", OLD), tag("v2", "m2", OLD + MINUTE)],
        revisions: [revision("m1", image(["l1"])), revision("m2", image(["l2"])), revision("untagged", image(["l3"]))],
        links: links("l1", "l2", "l3"),
      }),
      options({ keepTags: 1 }),
    );
    expect(sorted(marks.manifests)).toEqual(["m1"]);
    expect(sorted(marks.links)).toEqual(["l1"]);
  });
});

describe("mark: retention by last pull (pulledWithin)", () => {
  /** A tag pushed at `uploaded` whose manifest was last pulled at `lastPull` (undefined: never). */
  const used = (name: string, digest: string, lastPull: number | undefined, uploaded = OLD): ListedTag =>
    lastPull === undefined ? tag(name, digest, uploaded) : { ...tag(name, digest, uploaded), lastPull };
  const revisions = (...digests: string[]) => digests.map((digest) => revision(digest, image([`l-${digest}`])));
  const within = { pulledWithin: "30m" };

  it("of two tags pushed long ago, the one pulled recently stays and the other goes, with its manifest and links", () => {
    const marks = markRepository(
      listing({
        tags: [used("pulled", "m1", NOW - 5 * MINUTE), used("stale", "m2", NOW - 45 * MINUTE)],
        revisions: revisions("m1", "m2"),
        links: links("l-m1", "l-m2"),
      }),
      options(within),
    );
    expect(sorted(marks.tags)).toEqual(["stale"]);
    expect(sorted(marks.manifests)).toEqual(["m2"]);
    expect(sorted(marks.links)).toEqual(["l-m2"]);
  });

  it("a tag's push counts as its last use: one pushed recently and never pulled stays, and so does one pushed after its last pull", () => {
    const marks = markRepository(
      listing({
        tags: [
          used("new", "m1", undefined, NOW - 10 * MINUTE),
          used("moved", "m2", NOW - 50 * MINUTE, NOW - 10 * MINUTE),
          used("never", "m3", undefined),
        ],
        revisions: revisions("m1", "m2", "m3"),
      }),
      options(within),
    );
    expect(sorted(marks.tags)).toEqual(["never"]);
  });

  it("a pull counts for every tag naming the manifest", () => {
    const marks = markRepository(
      listing({
        tags: [used("latest", "m1", NOW - MINUTE), used("v1", "m1", NOW - MINUTE)],
        revisions: revisions("m1"),
      }),
      options(within),
    );
    expect(sorted(marks.tags)).toEqual([]);
  });

  it("keepTagPatterns and keepTags still keep tags nobody pulled", () => {
    const marks = markRepository(
      listing({
        tags: [
          used("v1", "m1", undefined, OLD),
          used("newest", "m2", undefined, OLD + 2 * MINUTE),
          used("older", "m3", undefined, OLD + MINUTE),
          used("pulled", "m4", NOW - MINUTE, OLD),
        ],
        revisions: revisions("m1", "m2", "m3", "m4"),
      }),
      options({ ...within, keepTags: 1, keepTagPatterns: ["v*"] }),
    );
    expect(sorted(marks.tags)).toEqual(["older"]);
  });

  it("with removeTagsOlderThan too, a tag goes only when neither keeps it", () => {
    const marks = markRepository(
      listing({
        tags: [used("young", "m1", undefined, NOW - 40 * MINUTE), used("old", "m2", undefined, OLD)],
        revisions: revisions("m1", "m2"),
      }),
      options({ ...within, removeTagsOlderThan: "50m" }),
    );
    expect(sorted(marks.tags)).toEqual(["old"]);
  });

  it("a tag whose removal was refused stays whatever its pulls", () => {
    const marks = markRepository(
      listing({ tags: [used("stale", "m1", undefined)], revisions: revisions("m1") }),
      options(within, { keepTags: new Set(["stale"]) }),
    );
    expect(sorted(marks.tags)).toEqual([]);
    expect(sorted(marks.manifests)).toEqual([]);
  });
});

describe("mark: indexes and referrers", () => {
  it("a tagged index keeps the manifests it lists, untagged and under removeUntaggedOlderThan, and their blobs", () => {
    const marks = markRepository(
      listing({
        tags: [tag("multi", "i1")],
        revisions: [
          revision("i1", index(["amd64", "arm64"])),
          revision("amd64", image(["la"])),
          revision("arm64", image(["lb"])),
          revision("orphan", image(["lc"])),
        ],
        links: links("la", "lb", "lc"),
      }),
      options({ removeUntaggedOlderThan: "0s" }),
    );
    expect(sorted(marks.manifests)).toEqual(["orphan"]);
    expect(sorted(marks.links)).toEqual(["lc"]);
    expect(sorted(marks.inUse)).toEqual(["amd64", "arm64", "i1", "la", "lb"]);
  });

  it("an index's children go with it when a rule removes its tag", () => {
    const marks = markRepository(
      listing({
        tags: [tag("old", "i1", OLD), tag("new", "m2", OLD + MINUTE)],
        revisions: [revision("i1", index(["child"])), revision("child", image(["l1"])), revision("m2", image(["l2"]))],
        links: links("l1", "l2"),
      }),
      options({ keepTags: 1, removeUntaggedOlderThan: "0s" }),
    );
    expect(sorted(marks.manifests)).toEqual(["child", "i1"]);
    expect(sorted(marks.links)).toEqual(["l1"]);
  });

  it("referrers of a kept manifest are kept, transitively, with their blobs", () => {
    const marks = markRepository(
      listing({
        tags: [tag("latest", "m1")],
        revisions: [
          revision("m1", image(["l1"])),
          revision("signature", image(["sig"], { subject: "m1" })),
          revision("attestation", image(["att"], { subject: "signature" })),
        ],
        links: links("l1", "sig", "att"),
      }),
      options({ removeUntaggedOlderThan: "0s" }),
    );
    expect(sorted(marks.manifests)).toEqual([]);
    expect(sorted(marks.links)).toEqual([]);
    expect(sorted(marks.inUse)).toEqual(["att", "attestation", "l1", "m1", "sig", "signature"]);
  });

  it("a referrer whose subject goes in this run goes in the next (a push may bring the subject back)", () => {
    const marks = markRepository(
      listing({
        revisions: [revision("m1", image(["l1"])), revision("signature", image(["sig"], { subject: "m1" }))],
        links: links("l1", "sig"),
      }),
      options({ removeUntaggedOlderThan: "0s" }),
    );
    expect(sorted(marks.manifests)).toEqual(["m1"]);
    expect(sorted(marks.links)).toEqual(["l1"]);
    expect(marks.inUse.has("sig")).toBe(true);
  });

  it("a referrer whose subject the repository does not hold follows the untagged rule", () => {
    const marks = markRepository(
      listing({ revisions: [revision("signature", image(["sig"], { subject: "elsewhere" }))], links: links("sig") }),
      options({ removeUntaggedOlderThan: "0s" }),
    );
    expect(sorted(marks.manifests)).toEqual(["signature"]);
    expect(sorted(marks.links)).toEqual(["sig"]);
  });
});

describe("mark: layers shared across repositories", () => {
  it("each repository is marked alone: one's link to a shared blob goes while the other's keeps the blob in use", () => {
    const one = markRepository(listing({ links: links("shared", "own") }), options());
    const two = markRepository(
      listing({ tags: [tag("latest", "m2")], revisions: [revision("m2", image(["shared"]))], links: links("shared") }),
      options(),
    );
    expect(sorted(one.links)).toEqual(["own", "shared"]);
    expect(sorted(two.links)).toEqual([]);
    // The run condemns only blobs no repository marks: the shared one stays.
    const inUse = new Set([...one.inUse, ...two.inUse]);
    expect(inUse.has("shared")).toBe(true);
    expect(inUse.has("own")).toBe(false);
  });
});

describe("mark: refused removals", () => {
  const retained = listing({
    tags: [tag("old", "m1", OLD), tag("new", "m2", OLD + MINUTE)],
    revisions: [revision("m1", image(["l1"])), revision("m2", image(["l2"])), revision("child", image(["l3"]))],
    links: links("l1", "l2", "l3"),
  });

  it("a tag whose removal was refused keeps its manifest and what it uses", () => {
    const marks = markRepository(retained, options({ keepTags: 1 }, { keepTags: new Set(["old"]) }));
    expect(sorted(marks.tags)).toEqual([]);
    expect(sorted(marks.manifests)).toEqual([]);
    expect(sorted(marks.links)).toEqual([]);
  });

  it("a manifest whose removal was refused is kept like a tagged one", () => {
    const marks = markRepository(
      retained,
      options({ keepTags: 1, removeUntaggedOlderThan: "0s" }, { keepManifests: new Set(["child"]) }),
    );
    expect(sorted(marks.tags)).toEqual(["old"]);
    expect(sorted(marks.manifests)).toEqual(["m1"]);
    expect(sorted(marks.links)).toEqual(["l1"]);
    expect(marks.inUse.has("l3")).toBe(true);
  });
});
