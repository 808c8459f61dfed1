import { describe, expect, it } from "vitest";
import { expectError, registry } from "./helpers";

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

  it("answers an unknown endpoint with an OCI error JSON and 404", async () => {
    const response = await registry("/v2/some-repo/no-such-endpoint");
    expect(response.headers.get("Content-Type")).toContain("application/json");
    await expectError(response, 404);
  });
});
