/* global Response, crypto, URL */
// The floor target of bench/request-cpu.mjs (--floor): a stand-in registry that answers the
// bench's push and its four small requests each with the one storage call ours makes for it
// and nothing else (no authentication, no checks): HEAD manifest by tag one R2 head (the
// tag object's custom metadata, as ours), GET manifest by digest one KV get (the bytes, as
// ours), HEAD blob one KV get (the descriptor as JSON, as ours; with FLOOR_BLOB_HEAD=r2 one R2
// head, as serverless-registry), tags/list one R2 list. What
// a registry costs beyond it is its own work. Not a registry: it exists to be measured.
const json = (value, status = 200) =>
  new Response(JSON.stringify(value), { status, headers: { "Content-Type": "application/json" } });

async function sha256(bytes) {
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return `sha256:${[...hash].map((byte) => byte.toString(16).padStart(2, "0")).join("")}`;
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const path = url.pathname;
    if (path === "/v2/" || path === "/v2") return json({});
    let match = /^\/v2\/(.+)\/blobs\/uploads\/$/.exec(path);
    if (match && request.method === "POST") {
      return new Response(null, {
        status: 202,
        headers: { Location: `/v2/${match[1]}/blobs/uploads/${crypto.randomUUID()}`, "Content-Length": "0" },
      });
    }
    match = /^\/v2\/(.+)\/blobs\/uploads\/[^/]+$/.exec(path);
    if (match && request.method === "PUT") {
      const bytes = new Uint8Array(await request.arrayBuffer());
      const digest = await sha256(bytes);
      if (digest !== url.searchParams.get("digest")) return json({ errors: [{ code: "DIGEST_INVALID" }] }, 400);
      // With its SHA-256 checksum, as serverless-registry stores a blob (FLOOR_BLOB_HEAD=r2 answers it).
      await env.BLOBS.put(`blobs/${digest}`, bytes, { sha256: digest.slice("sha256:".length) });
      await env.META.put(`blob:${digest}`, JSON.stringify({ digest, size: bytes.length, key: `blobs/${digest}` }));
      return new Response(null, { status: 201, headers: { "Docker-Content-Digest": digest, "Content-Length": "0" } });
    }
    match = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(path);
    if (match && request.method === "PUT") {
      const [, name, tag] = match;
      const bytes = new Uint8Array(await request.arrayBuffer());
      const digest = await sha256(bytes);
      const mediaType = request.headers.get("Content-Type") ?? "application/vnd.oci.image.manifest.v1+json";
      await env.META.put(`manifest:${digest}`, bytes, { metadata: { mediaType } });
      await env.BLOBS.put(`tags/${name}/${tag}`, digest, {
        customMetadata: { digest, mediaType, length: String(bytes.length) },
      });
      return new Response(null, { status: 201, headers: { "Docker-Content-Digest": digest, "Content-Length": "0" } });
    }
    if (match && request.method === "HEAD") {
      const object = await env.BLOBS.head(`tags/${match[1]}/${match[2]}`);
      if (!object) return new Response(null, { status: 404 });
      const { digest, mediaType, length } = object.customMetadata;
      return new Response(null, {
        headers: { "Content-Type": mediaType, "Docker-Content-Digest": digest, "Content-Length": length },
      });
    }
    if (match && request.method === "GET") {
      const { value, metadata } = await env.META.getWithMetadata(`manifest:${match[2]}`, "arrayBuffer");
      if (!value) return new Response(null, { status: 404 });
      return new Response(value, {
        headers: { "Content-Type": metadata.mediaType, "Docker-Content-Digest": match[2] },
      });
    }
    match = /^\/v2\/(.+)\/blobs\/([^/]+)$/.exec(path);
    if (match && request.method === "HEAD" && env.FLOOR_BLOB_HEAD === "r2") {
      // serverless-registry's call for a blob's HEAD: an R2 head, answered with its checksum and size.
      const object = await env.BLOBS.head(`blobs/${match[2]}`);
      if (!object) return new Response(null, { status: 404 });
      const hex = [...new Uint8Array(object.checksums.sha256)].map((byte) => byte.toString(16).padStart(2, "0"));
      return new Response(null, {
        headers: { "Docker-Content-Digest": `sha256:${hex.join("")}`, "Content-Length": String(object.size) },
      });
    }
    if (match && request.method === "HEAD") {
      const descriptor = await env.META.get(`blob:${match[2]}`, { type: "json", cacheTtl: 60 });
      if (!descriptor) return new Response(null, { status: 404 });
      return new Response(null, {
        headers: { "Docker-Content-Digest": descriptor.digest, "Content-Length": String(descriptor.size) },
      });
    }
    match = /^\/v2\/(.+)\/tags\/list$/.exec(path);
    if (match && request.method === "GET") {
      const prefix = `tags/${match[1]}/`;
      const listing = await env.BLOBS.list({ prefix });
      return json({ name: match[1], tags: listing.objects.map((object) => object.key.slice(prefix.length)) });
    }
    return json({ errors: [{ code: "UNSUPPORTED" }] }, 404);
  },
};
