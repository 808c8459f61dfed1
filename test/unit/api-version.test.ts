import { createExecutionContext, env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import worker from "../../src/index";
import { expectError, pushImage, registry } from "./helpers";

describe("GET /v2/ (API version check)", () => {
  it("answers 200 with a JSON body and Docker-Distribution-API-Version: registry/2.0", async () => {
    const response = await registry("/v2/");
    expect(response.status).toBe(200);
    expect(response.headers.get("Docker-Distribution-API-Version")).toBe("registry/2.0");
    expect(await response.json()).toEqual({});
  });

  it("answers /v2 without the trailing slash the same way", async () => {
    const response = await registry("/v2");
    expect(response.status).toBe(200);
    expect(response.headers.get("Docker-Distribution-API-Version")).toBe("registry/2.0");
  });
});

describe("every /v2 response", () => {
  it("carries the API version header on errors too", async () => {
    const response = await registry("/v2/no-such-repo/blobs/sha256:" + "0".repeat(64));
    expect(response.headers.get("Docker-Distribution-API-Version")).toBe("registry/2.0");
    await expectError(response, 404, "BLOB_UNKNOWN");
  });

  it("carries the API version header and Server-Timing on every pull's answer", async () => {
    const image = await pushImage("api-version/pulls", "v1");
    const manifest = JSON.parse(new TextDecoder().decode(image.bytes)) as { layers: { digest: string }[] };
    const layer = manifest.layers[0]?.digest ?? "";
    const answers = [
      await registry("/v2/api-version/pulls/manifests/v1", { method: "HEAD" }),
      await registry("/v2/api-version/pulls/manifests/v1"),
      await registry(`/v2/api-version/pulls/manifests/${image.digest}`, {
        headers: { "If-None-Match": `"${image.digest}"` },
      }),
      await registry(`/v2/api-version/pulls/blobs/${layer}`, { method: "HEAD" }),
      await registry(`/v2/api-version/pulls/blobs/${layer}`),
      await registry(`/v2/api-version/pulls/blobs/${layer}`, { headers: { Range: "bytes=0-0" } }),
      await registry("/v2/api-version/pulls/tags/list"),
    ];
    expect(answers.map((answer) => answer.status)).toEqual([200, 200, 304, 200, 200, 206, 200]);
    for (const answer of answers) {
      expect(answer.headers.get("Docker-Distribution-API-Version")).toBe("registry/2.0");
      expect(answer.headers.get("Server-Timing")).toMatch(/^r2;dur=/);
      await answer.arrayBuffer();
    }
  });

  it("answers a HEAD of a route whose GET has a body with the GET's status and headers and no body", async () => {
    await pushImage("api-version/heads", "v1");
    for (const path of ["/v2/", "/v2/api-version/heads/tags/list"]) {
      // The Worker's own answer (SELF.fetch's HTTP layer would drop a HEAD's body anyway).
      const request = new Request(new URL(path, "https://registry.example.com"), { method: "HEAD" });
      const response = await worker.fetch(request, env, createExecutionContext());
      expect(response.status).toBe(200);
      expect(response.body).toBeNull();
      expect(response.headers.get("Content-Type")).toContain("application/json");
      expect(response.headers.get("Docker-Distribution-API-Version")).toBe("registry/2.0");
      expect(response.headers.get("Server-Timing")).toMatch(/^r2;dur=/);
    }
  });

  it("answers an unknown endpoint with an OCI error JSON and 404", async () => {
    const response = await registry("/v2/some-repo/no-such-endpoint");
    expect(response.headers.get("Content-Type")).toContain("application/json");
    await expectError(response, 404);
  });
});
