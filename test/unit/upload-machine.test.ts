import { describe, expect, it } from "vitest";
import { MAX_PARTS } from "../../src/settings/settings";
import { parseDigest } from "../../src/oci/digest";
import { RegistryError } from "../../src/oci/errors";
import { SYSTEM_CONTEXT } from "../../src/registry/changes";
import { Paths } from "../../src/registry/paths";
import { FILL_PART_BYTES, initialMachine, readsPast, transition } from "../../src/uploads/upload-machine";
import type { Machine, MultipartRef, UploadEffect, UploadEvent, UploadState } from "../../src/uploads/upload-state";

/**
 * The upload engine's decisions, without storage or bytes: literal states go in, the
 * effects the core asks for come out. A small scripted shell (`drive`) answers the effects
 * the way the Durable Object would, from a script the test gives.
 */

const MiB = 1024 * 1024;
const PART = 5 * MiB;
const DIGEST = parseDigest(`sha256:${"a".repeat(64)}`);
const OTHER = parseDigest(`sha256:${"b".repeat(64)}`);
const SHA512 = parseDigest(`sha512:${"c".repeat(128)}`);
const HASH0 = new Uint8Array([0]);
const HASH1 = new Uint8Array([1]);
const HASH2 = new Uint8Array([2]);
const KEY = Paths.uploadData("u1");

function upload(changes: Partial<UploadState> = {}): UploadState {
  return {
    uploadId: "u1",
    name: "team/app",
    startedAt: 1000,
    updatedAt: 1000,
    partSize: PART,
    offset: 0,
    parts: [],
    hashState: HASH0,
    ...changes,
  };
}

function parts(count: number): R2UploadedPart[] {
  return Array.from({ length: count }, (_, index) => ({ partNumber: index + 1, etag: `etag-${index + 1}` }));
}

/** How the scripted shell answers: the body's reads, the digests, the registry's lookups, and failures. */
interface Script {
  /** What the body brings: parts cut while reading, then how it ends. */
  body?: { parts?: number; end: Extract<UploadEvent, { type: "body-ended" | "body-failed" }> };
  computed?: string;
  stored?: { digest: string; size: number; key: string } | null;
  objectSize?: number | null;
  /** Effects that fail (by type, or a predicate), with the error they fail with. */
  fail?: { when: (effect: UploadEffect) => boolean; error: unknown }[];
}

interface Run {
  effects: UploadEffect[];
  outcome: { value: unknown } | { error: unknown };
  machine: Machine;
}

/** Drives the core as the Durable Object does (UploadSession.drive), recording every effect. */
function drive(start: Machine, event: UploadEvent, script: Script = {}): Run {
  const effects: UploadEffect[] = [];
  let machine = start;
  const perform = (effect: UploadEffect): UploadEvent | undefined => {
    effects.push(effect);
    const failure = script.fail?.find((rule) => rule.when(effect));
    if (failure) {
      if (effect.type === "abort-multipart" && effect.bestEffort) return undefined;
      throw failure.error;
    }
    switch (effect.type) {
      case "receive": {
        for (let part = 0; part < (script.body?.parts ?? 0); part++) {
          const hashState = "native" in effect.hash ? null : HASH1;
          const outcome = loop({ type: "part-full", bytes: new Uint8Array(0), hashState });
          // As the reader does: a part that failed fails the read, with the part's error.
          if ("error" in outcome)
            return { type: "body-failed", error: outcome.error, partError: { error: outcome.error } };
        }
        return script.body?.end ?? { type: "body-ended", received: 0, hashState: null };
      }
      case "create-multipart":
        return { type: "multipart-created", uploadId: "mp-1" };
      case "upload-part":
        return { type: "part-uploaded", part: { partNumber: effect.number, etag: `etag-${effect.number}` } };
      case "hash":
        return { type: "hashed", computed: script.computed ?? DIGEST.value };
      case "find-stored":
        return { type: "found", descriptor: script.stored ?? null };
      case "head-object":
        return { type: "object-size", size: script.objectSize ?? null };
      case "commit-blob": {
        const blob = effect.blob;
        const descriptor =
          blob.object === "stored" ? blob.descriptor : { digest: effect.digest.value, size: blob.size, key: blob.key };
        return { type: "committed", descriptor };
      }
      default:
        return undefined;
    }
  };
  function loop(first: UploadEvent): { value: unknown } | { error: unknown } {
    let next = first;
    for (let guard = 0; guard < 100; guard++) {
      const step = transition(machine, next);
      machine = step.machine;
      let answer: UploadEvent = { type: "done" };
      try {
        for (const effect of step.effects) answer = perform(effect) ?? { type: "done" };
      } catch (error) {
        if (step.outcome) return { error };
        next = { type: "failed", error };
        continue;
      }
      if (step.outcome) return step.outcome;
      next = answer;
    }
    throw new Error("the machine did not end the request");
  }
  const outcome = loop(event);
  return { effects, outcome, machine };
}

function types(run: Run): string[] {
  return run.effects.map((effect) => effect.type);
}

function errorOf(run: Run): RegistryError {
  if (!("error" in run.outcome)) throw new Error(`expected an error, got ${JSON.stringify(run.outcome)}`);
  const error = run.outcome.error;
  if (!(error instanceof RegistryError)) throw error;
  return error;
}

function saves(run: Run): Extract<UploadEffect, { type: "save" }>[] {
  return run.effects.filter((effect): effect is Extract<UploadEffect, { type: "save" }> => effect.type === "save");
}

function machineOf(state: UploadState | null, recorded: MultipartRef | null = null): Machine {
  return initialMachine(state, recorded);
}

const patch = (declared = {}, hasBody = true): UploadEvent => ({ type: "append", name: "team/app", declared, hasBody });
const put = (digest = DIGEST, hasBody = false, declared = {}, once = false): UploadEvent => ({
  type: "commit",
  name: "team/app",
  digest,
  declared,
  hasBody,
  once,
  context: SYSTEM_CONTEXT,
});
const ended = (received: number, hashState: Uint8Array | null = HASH2) =>
  ({ type: "body-ended", received, hashState }) as const;

describe("a chunk's place in the upload", () => {
  it("PATCH at another offset than the upload's is RANGE_INVALID (416) with both numbers, and changes nothing", () => {
    const run = drive(machineOf(upload({ offset: 100 })), patch({ start: 50, length: 10 }));
    const error = errorOf(run);
    expect([error.code, error.status, error.detail]).toEqual(["RANGE_INVALID", 416, { offset: 100, start: 50 }]);
    // Numbers only: the Range header is the route's.
    expect(error.headers).toEqual({});
    expect(run.effects).toEqual([]);
  });

  it("PATCH on an unknown upload, or another repository's, is BLOB_UPLOAD_UNKNOWN", () => {
    expect(errorOf(drive(machineOf(null), patch())).code).toBe("BLOB_UPLOAD_UNKNOWN");
    expect(errorOf(drive(machineOf(upload({ name: "other" })), patch())).code).toBe("BLOB_UPLOAD_UNKNOWN");
  });

  it("PATCH after the upload completed is refused; PUT commits it", () => {
    const completed = upload({ completed: { digest: DIGEST.value, size: 3, key: KEY } });
    expect(errorOf(drive(machineOf(completed), patch())).code).toBe("BLOB_UPLOAD_INVALID");
  });

  it("a declared length with no body is SIZE_INVALID", () => {
    expect(errorOf(drive(machineOf(upload()), patch({ length: 10 }, false))).code).toBe("SIZE_INVALID");
  });

  it("the reader stops at the first byte past the declared length or the chunk limit", () => {
    expect(readsPast({ length: 10 }, 10)).toBe(false);
    expect(readsPast({ length: 10 }, 11)).toBe(true);
    expect(readsPast({ limit: 100 }, 101)).toBe(true);
    expect(readsPast({}, Number.MAX_SAFE_INTEGER)).toBe(false);
  });

  it("a body shorter or longer than declared is SIZE_INVALID, and the upload is saved as it was", () => {
    const before = upload({ offset: 100, hashState: HASH1 });
    for (const received of [5, 11]) {
      const run = drive(machineOf(before), patch({ length: 10 }), { body: { end: ended(received) } });
      const error = errorOf(run);
      expect([error.code, error.detail]).toEqual(["SIZE_INVALID", { declared: 10, received, offset: 100 }]);
      expect(saves(run).map((save) => save.upload)).toEqual([before]);
    }
  });

  it("a body over the chunk limit is 413 with the limit (the advice is the route's), the upload as it was", () => {
    const before = upload({ offset: 100 });
    const run = drive(machineOf(before), patch({ limit: 64 }), { body: { end: ended(65) } });
    const error = errorOf(run);
    expect([error.code, error.status, error.detail]).toEqual(["SIZE_INVALID", 413, { limit: 64 }]);
    expect(saves(run).map((save) => save.upload)).toEqual([before]);
  });

  it("past the declared length and the limit at once, it is the length that is wrong", () => {
    const run = drive(machineOf(upload()), patch({ length: 10, limit: 5 }), { body: { end: ended(11) } });
    expect(errorOf(run).status).toBe(400);
  });
});

describe("parts and the staged tail", () => {
  it("the reader fills a part-sized buffer from the start of the staged tail (a part boundary)", () => {
    const state = upload({ offset: 2 * PART + 300, parts: parts(2), multipartUploadId: "mp-1" });
    const run = drive(machineOf(state), patch(), { body: { end: ended(0) } });
    expect(run.effects[0]).toMatchObject({ type: "receive", partSize: PART, bufferStart: 2 * PART, tailSize: 300 });
    expect(run.effects[0]).toMatchObject({ hash: { resumable: HASH0 } });
  });

  it("the first full part creates the multipart upload, records it at once, and uploads part 1", () => {
    const state = upload({ offset: 300 });
    const run = drive(machineOf(state), patch(), { body: { parts: 1, end: ended(PART) } });
    expect(types(run).slice(0, 5)).toEqual(["receive", "create-multipart", "record-multipart", "upload-part", "save"]);
    expect(run.effects[2]).toEqual({ type: "record-multipart", multipart: { key: KEY, uploadId: "mp-1" } });
    expect(run.effects[3]).toMatchObject({ number: 1, multipart: { key: KEY, uploadId: "mp-1" } });
    // The durable point after the part: offset at the part boundary, the hash state there.
    expect(saves(run)[0]?.upload).toMatchObject({ offset: PART, hashState: HASH1, parts: parts(1) });
  });

  it("every part is the part size: the next part's number follows the last, and the offset is parts × size", () => {
    const state = upload({ offset: 3 * PART, parts: parts(3), multipartUploadId: "mp-1" });
    const run = drive(machineOf(state), patch(), { body: { parts: 2, end: ended(2 * PART + 7) } });
    const uploads = run.effects.filter((effect) => effect.type === "upload-part");
    expect(uploads.map((effect) => effect.number)).toEqual([4, 5]);
    expect(saves(run).map((save) => save.upload.offset)).toEqual([4 * PART, 5 * PART, 5 * PART + 7]);
    expect(run.outcome).toEqual({ value: { uploadId: "u1", name: "team/app", offset: 5 * PART + 7, startedAt: 1000 } });
  });

  it(`no part after the ${MAX_PARTS}th: SIZE_INVALID, and the upload is saved as it was`, () => {
    const state = upload({ offset: MAX_PARTS * PART, parts: parts(MAX_PARTS), multipartUploadId: "mp-1" });
    const run = drive(machineOf(state), patch(), { body: { parts: 1, end: ended(PART) } });
    expect(types(run)).toEqual(["receive", "save"]);
    expect(errorOf(run).message).toContain(`${MAX_PARTS} parts`);
    expect(saves(run)[0]?.upload).toEqual(state);
  });

  it("the bytes past the last part are staged with the offset: appended after the old tail, old rows kept", () => {
    const state = upload({ offset: 300 });
    const run = drive(machineOf(state), patch(), { body: { end: ended(200) } });
    expect(saves(run)).toEqual([
      {
        type: "save",
        upload: { ...state, offset: 500, hashState: HASH2 },
        stage: { pruneBefore: 0, from: 300, to: 500 },
      },
    ]);
  });

  it("after a part is cut, the new tail is staged from the part boundary and the rows before it pruned", () => {
    const state = upload({ offset: 300 });
    const run = drive(machineOf(state), patch(), { body: { parts: 1, end: ended(PART + 100) } });
    expect(saves(run).at(-1)?.stage).toEqual({ pruneBefore: PART, from: PART, to: PART + 400 });
  });

  it("a body that breaks off keeps the last durable point (the parts it completed) and says to resume", () => {
    const state = upload({ offset: 300 });
    const broke = { type: "body-failed", error: new TypeError("network") } as const;
    const run = drive(machineOf(state), patch(), { body: { parts: 1, end: broke } });
    const error = errorOf(run);
    expect([error.code, (error.detail as { offset: number }).offset]).toEqual(["BLOB_UPLOAD_INVALID", PART]);
    expect(saves(run).at(-1)?.upload).toMatchObject({ offset: PART, parts: parts(1) });
  });

  it("a storage failure while reading puts the upload back as it was, keeping the multipart upload it created", () => {
    const state = upload({ offset: 300 });
    const failure = new RegistryError("UNAVAILABLE", "r2 down");
    const run = drive(machineOf(state), patch(), {
      body: { parts: 1, end: { type: "body-failed", error: new Error("read"), partError: { error: failure } } },
    });
    expect(errorOf(run)).toBe(failure);
    expect(saves(run).at(-1)?.upload).toEqual({ ...state, multipartUploadId: "mp-1" });
  });
});

describe("commit", () => {
  it("PUT with no body: the digest from the saved state, the tail as the one object, published, the session ends", () => {
    const state = upload({ offset: 300, hashState: HASH1 });
    const run = drive(machineOf(state), put());
    expect(types(run)).toEqual(["hash", "find-stored", "read-tail", "put-object", "save", "commit-blob", "wipe"]);
    expect(run.effects[0]).toEqual({ type: "hash", of: { state: HASH1 } });
    expect(run.effects[3]).toEqual({ type: "put-object", key: KEY, bytes: { tail: { from: 0, size: 300 } } });
    expect(saves(run)[0]).toMatchObject({
      clearTail: true,
      upload: { completed: { digest: DIGEST.value, size: 300, key: KEY } },
    });
    expect(run.effects[5]).toMatchObject({ blob: { object: "own", size: 300, key: KEY }, context: SYSTEM_CONTEXT });
    expect(run.outcome).toEqual({ value: { digest: DIGEST.value, size: 300, key: KEY } });
  });

  it("a multipart upload: `completing` is saved first, the tail is the last part, the upload completed", () => {
    const state = upload({ offset: 2 * PART + 10, parts: parts(2), multipartUploadId: "mp-1" });
    const run = drive(machineOf(state), put());
    expect(types(run)).toEqual([
      "hash",
      "find-stored",
      "read-tail",
      "save",
      "upload-part",
      "complete-multipart",
      "forget-multipart",
      "save",
      "commit-blob",
      "wipe",
    ]);
    expect(saves(run)[0]?.upload.completing).toBe(DIGEST.value);
    expect(run.effects[4]).toMatchObject({ number: 3, bytes: { tail: { from: 2 * PART, size: 10 } } });
    expect(run.effects[5]).toMatchObject({ parts: parts(3) });
  });

  it("a digest that does not match a chunked upload is DIGEST_INVALID; the session stays for another try", () => {
    const run = drive(machineOf(upload({ offset: 300 })), put(), { computed: OTHER.value });
    const error = errorOf(run);
    expect([error.code, error.detail]).toEqual(["DIGEST_INVALID", { digest: DIGEST.value, computed: OTHER.value }]);
    expect(types(run)).toEqual(["hash"]);
  });

  it("a digest stored already: our multipart upload is aborted and the stored copy linked as a duplicate", () => {
    const stored = { digest: DIGEST.value, size: PART + 10, key: "uploads/other/data" };
    const state = upload({ offset: PART + 10, parts: parts(1), multipartUploadId: "mp-1" });
    const run = drive(machineOf(state), put(), { stored });
    expect(types(run)).toEqual([
      "hash",
      "find-stored",
      "abort-multipart",
      "forget-multipart",
      "save",
      "commit-blob",
      "wipe",
    ]);
    expect(saves(run)[0]?.upload).toMatchObject({ completed: stored, multipartUploadId: undefined });
    expect(run.effects[5]).toMatchObject({ blob: { object: "duplicate", key: stored.key } });
  });

  it("PUT with the whole body on a fresh session: native hash, nothing saved until the object is finished", () => {
    const run = drive(machineOf(upload()), put(DIGEST, true), { body: { end: ended(300, null) } });
    expect(run.effects[0]).toMatchObject({ type: "receive", hash: { native: "sha256" } });
    expect(types(run)).toEqual([
      "receive",
      "hash",
      "find-stored",
      "read-tail",
      "put-object",
      "save",
      "commit-blob",
      "wipe",
    ]);
    expect(run.effects[1]).toEqual({ type: "hash", of: "body" });
  });

  it("a whole body of the wrong digest leaves nothing: its multipart upload aborted, the state as before", () => {
    const state = upload();
    const run = drive(machineOf(state), put(DIGEST, true), {
      body: { parts: 1, end: ended(PART + 1, null) },
      computed: OTHER.value,
    });
    expect(errorOf(run).code).toBe("DIGEST_INVALID");
    expect(types(run)).toEqual([
      "receive",
      "create-multipart",
      "record-multipart",
      "upload-part",
      "hash",
      "abort-multipart",
      "forget-multipart",
      "save",
    ]);
    expect(saves(run)[0]?.upload).toEqual(state);
  });

  it("a failed whole body leaves no name of the multipart upload it aborted, even one the state before had", () => {
    // A refused chunk at offset 0 keeps the multipart upload it created; a whole body that
    // then fails aborts it. The state that comes back must not name it.
    const state = upload({ multipartUploadId: "mp-kept" });
    const run = drive(machineOf(state, { key: KEY, uploadId: "mp-kept" }), put(DIGEST, true), {
      body: { parts: 1, end: ended(PART + 1, null) },
      computed: OTHER.value,
    });
    expect(run.effects).toContainEqual({ type: "abort-multipart", multipart: { key: KEY, uploadId: "mp-kept" } });
    expect(saves(run).at(-1)?.upload).toEqual({ ...state, multipartUploadId: undefined });
    // If the abort fails, the upload may still be there, and the state keeps naming it.
    const kept = drive(machineOf(state), put(DIGEST, true), {
      body: { end: ended(300, null) },
      computed: OTHER.value,
      fail: [{ when: (effect) => effect.type === "abort-multipart", error: new Error("r2 down") }],
    });
    expect(saves(kept).at(-1)?.upload).toEqual(state);
  });

  it("POST ?digest= (once): a failure purges the session it made for itself", () => {
    const run = drive(machineOf(upload()), put(DIGEST, true, {}, true), {
      body: { end: ended(300, null) },
      computed: OTHER.value,
    });
    expect(errorOf(run).code).toBe("DIGEST_INVALID");
    // The whole body's rollback (no multipart upload to abort), then the purge.
    expect(types(run)).toEqual(["receive", "hash", "forget-multipart", "save", "forget-multipart", "wipe"]);
  });

  it("a PUT carrying the last chunk marks it verified before completing", () => {
    const state = upload({ offset: 200 });
    const run = drive(machineOf(state), put(DIGEST, true), { body: { end: ended(100) } });
    expect(saves(run)[1]?.upload.verified).toEqual({ digest: DIGEST.value, offset: 300 });
  });

  it("sha512: the finished object is read back; a mismatch deletes it and ends the upload", () => {
    const state = upload({ offset: 300 });
    const good = drive(machineOf(state), put(SHA512), { computed: SHA512.value });
    expect(types(good)).toEqual(["read-tail", "put-object", "hash", "save", "commit-blob", "wipe"]);
    const bad = drive(machineOf(state), put(SHA512), { computed: `sha512:${"d".repeat(128)}` });
    expect(errorOf(bad).code).toBe("DIGEST_INVALID");
    expect(types(bad)).toEqual(["read-tail", "put-object", "hash", "delete-object", "forget-multipart", "wipe"]);
  });
});

describe("a commit the registry's policies refuse (a quota)", () => {
  const denied = new RegistryError("DENIED", "quota exceeded");
  const judged = (event: UploadEvent): UploadEvent => ({ ...event, admits: true }) as UploadEvent;
  const refuse = (type: UploadEffect["type"], error: unknown = denied) => ({
    fail: [{ when: (effect: UploadEffect) => effect.type === type, error }],
  });

  it("a size known before the body is asked first: the bytes so far, plus a declared body; none for an unknown length", () => {
    const state = upload({ offset: 300 });
    const noBody = drive(machineOf(state), judged(put()));
    expect(noBody.effects[0]).toMatchObject({
      type: "admit-upload",
      repository: "team/app",
      digest: DIGEST,
      size: 300,
    });
    // Then the commit as without asking.
    expect(types(noBody).slice(1)).toEqual(types(drive(machineOf(state), put())));
    const declared = drive(machineOf(state), judged(put(DIGEST, true, { length: 100 })), { body: { end: ended(100) } });
    expect(declared.effects[0]).toMatchObject({ type: "admit-upload", size: 400 });
    const unknown = drive(machineOf(state), judged(put(DIGEST, true)), { body: { end: ended(100) } });
    expect(types(unknown)).not.toContain("admit-upload");
    // Without policies to ask (the shell says so), no step is added.
    expect(types(drive(machineOf(state), put()))[0]).toBe("hash");
  });

  it("refused before the body is read: the upload ends with nothing kept (multipart aborted, session wiped)", () => {
    const state = upload({ offset: PART + 10, parts: parts(1), multipartUploadId: "mp-1" });
    const run = drive(machineOf(state), judged(put()), refuse("admit-upload"));
    expect(errorOf(run)).toBe(denied);
    expect(types(run)).toEqual(["admit-upload", "discard-body", "abort-multipart", "forget-multipart", "wipe"]);
  });

  it("a policy that could not be asked (503) leaves the upload as it was, for a retry", () => {
    const down = new RegistryError("UNAVAILABLE", "down");
    const run = drive(machineOf(upload({ offset: 300 })), judged(put()), refuse("admit-upload", down));
    expect(errorOf(run)).toBe(down);
    expect(types(run)).toEqual(["admit-upload", "discard-body"]);
  });

  it("refused when published (a race lost, a body of unknown length): its own object is deleted, then the session", () => {
    const run = drive(machineOf(upload({ offset: 300 })), put(), refuse("commit-blob"));
    expect(errorOf(run)).toBe(denied);
    expect(types(run)).toEqual([
      "hash",
      "find-stored",
      "read-tail",
      "put-object",
      "save",
      "commit-blob",
      "delete-object",
      "forget-multipart",
      "wipe",
    ]);
    expect(run.effects[6]).toEqual({ type: "delete-object", key: KEY });
    // The object could not be deleted: the refusal stands, the session ends all the same.
    const stuck = drive(machineOf(upload({ offset: 300 })), put(), {
      fail: [...refuse("commit-blob").fail, ...refuse("delete-object", new RegistryError("UNAVAILABLE", "r2")).fail],
    });
    expect(errorOf(stuck)).toBe(denied);
    expect(types(stuck).slice(-3)).toEqual(["delete-object", "forget-multipart", "wipe"]);
  });

  it("refused when published, a stored copy (a duplicate) or a retry's object is not deleted", () => {
    const stored = { digest: DIGEST.value, size: 300, key: "data/other" };
    const duplicate = drive(machineOf(upload({ offset: 300 })), put(), { stored, ...refuse("commit-blob") });
    expect(types(duplicate)).not.toContain("delete-object");
    expect(types(duplicate).slice(-2)).toEqual(["forget-multipart", "wipe"]);
    // An earlier request finished the object and may have published it: the sweep of
    // objects no descriptor names takes it, never this request.
    const completed = { digest: DIGEST.value, size: 300, key: KEY };
    const retry = drive(machineOf(upload({ offset: 300, completed })), put(), refuse("commit-blob"));
    expect(errorOf(retry)).toBe(denied);
    expect(types(retry)).toEqual(["discard-body", "commit-blob", "forget-multipart", "wipe"]);
  });
});

describe("a retry after a lost answer", () => {
  const completed = { digest: DIGEST.value, size: 300, key: KEY };

  it("completed already: only publishes and links (the body is not read again)", () => {
    const run = drive(machineOf(upload({ offset: 300, completed })), put(DIGEST, true));
    expect(types(run)).toEqual(["discard-body", "commit-blob", "wipe"]);
  });

  it("completed under another digest: DIGEST_INVALID, nothing published", () => {
    const run = drive(machineOf(upload({ offset: 300, completed })), put(OTHER));
    expect(errorOf(run).detail).toEqual({ digest: OTHER.value, completed: DIGEST.value });
    expect(types(run)).toEqual([]);
  });

  it("the last chunk verified already: it is not appended again", () => {
    const state = upload({ offset: 300, verified: { digest: DIGEST.value, offset: 300 } });
    const run = drive(machineOf(state), put(DIGEST, true));
    expect(types(run).slice(0, 2)).toEqual(["discard-body", "find-stored"]);
    expect(types(run)).not.toContain("receive");
  });

  it("a completion of the same digest whose answer was lost: the finished object of the right size is ours", () => {
    const state = upload({ offset: PART + 10, parts: parts(2), multipartUploadId: "mp-1", completing: DIGEST.value });
    const failure = new RegistryError("UNAVAILABLE", "lost");
    const run = drive(machineOf(state), put(), {
      fail: [{ when: (effect) => effect.type === "complete-multipart", error: failure }],
      objectSize: PART + 10,
    });
    expect(types(run)).toContain("head-object");
    expect(types(run).slice(-3)).toEqual(["save", "commit-blob", "wipe"]);
    // `completing` was this digest already: not saved again.
    expect(saves(run)).toHaveLength(1);
  });

  it("a failed completion after other bytes arrived (another digest was completing): the failure stands", () => {
    const state = upload({ offset: PART, parts: parts(1), multipartUploadId: "mp-1", completing: OTHER.value });
    const failure = new RegistryError("UNAVAILABLE", "lost");
    const run = drive(machineOf(state), put(), {
      fail: [{ when: (effect) => effect.type === "complete-multipart", error: failure }],
      objectSize: PART,
    });
    expect(errorOf(run)).toBe(failure);
    expect(types(run)).not.toContain("head-object");
  });

  it("an object of another size than the upload's is not ours: the failure stands", () => {
    const state = upload({ offset: PART, parts: parts(1), multipartUploadId: "mp-1", completing: DIGEST.value });
    const failure = new RegistryError("UNAVAILABLE", "lost");
    const run = drive(machineOf(state), put(), {
      fail: [{ when: (effect) => effect.type === "complete-multipart", error: failure }],
      objectSize: PART - 1,
    });
    expect(errorOf(run)).toBe(failure);
  });

  it("publishing refused for good (BLOB_UPLOAD_INVALID) ends the session; a storage failure keeps it", () => {
    const state = upload({ offset: 300, completed });
    const refused = new RegistryError("BLOB_UPLOAD_INVALID", "gone");
    const ends = drive(machineOf(state), put(), {
      fail: [{ when: (effect) => effect.type === "commit-blob", error: refused }],
    });
    expect(errorOf(ends)).toBe(refused);
    expect(types(ends)).toEqual(["discard-body", "commit-blob", "forget-multipart", "wipe"]);
    const down = new RegistryError("UNAVAILABLE", "r2 down");
    const stays = drive(machineOf(state), put(), {
      fail: [{ when: (effect) => effect.type === "commit-blob", error: down }],
    });
    expect(errorOf(stays)).toBe(down);
    expect(types(stays)).toEqual(["discard-body", "commit-blob"]);
  });
});

describe("the end of an upload", () => {
  it("cancel aborts the multipart upload, one a request created but never saved, and wipes the session", () => {
    const recorded = { key: KEY, uploadId: "mp-lost" };
    const run = drive(machineOf(upload({ multipartUploadId: "mp-1" }), recorded), { type: "cancel", name: "team/app" });
    expect(run.effects).toEqual([
      { type: "abort-multipart", multipart: recorded, bestEffort: true },
      { type: "abort-multipart", multipart: { key: KEY, uploadId: "mp-1" } },
      { type: "forget-multipart" },
      { type: "wipe" },
    ]);
    expect(run.outcome).toEqual({ value: null });
  });

  it("expiry: an upload used within its TTL (or busy) re-arms the alarm; an idle one is purged", () => {
    const state = upload({ updatedAt: 10_000 });
    const fresh = drive(machineOf(state), { type: "expire", now: 15_000, ttlMs: 10_000, busy: false });
    expect(fresh.effects).toEqual([{ type: "set-alarm", at: 20_000 }]);
    const busy = drive(machineOf(state), { type: "expire", now: 50_000, ttlMs: 10_000, busy: true });
    expect(busy.effects).toEqual([{ type: "set-alarm", at: 51_000 }]);
    const idle = drive(machineOf(state), { type: "expire", now: 50_000, ttlMs: 10_000, busy: false });
    expect(types(idle)).toEqual(["forget-multipart", "wipe"]);
  });
});

describe("mirror fills", () => {
  const fill = (hasBody = true): UploadEvent => ({
    type: "fill",
    name: "docker.io/library/alpine",
    digest: DIGEST,
    declared: { length: 300 },
    hasBody,
    context: SYSTEM_CONTEXT,
    uploadId: "f1",
    uploadPartSize: 16 * MiB,
    hashState: HASH0,
    now: 5000,
  });

  it("a digest stored meanwhile is linked as it is once the fill's bytes hash to it, and nothing is stored again", () => {
    const stored = { digest: DIGEST.value, size: 300, key: "uploads/x/data" };
    const run = drive(machineOf(null), fill(), { stored });
    expect(types(run)).toEqual(["find-stored", "hash", "commit-blob"]);
    expect(run.effects[1]).toMatchObject({ of: { drained: "sha256" } });
    expect(run.effects[2]).toMatchObject({ blob: { object: "stored", descriptor: stored } });
    expect(run.outcome).toEqual({ value: stored });
  });

  it("a digest stored meanwhile is not linked when the fill's bytes do not hash to it", () => {
    const stored = { digest: DIGEST.value, size: 300, key: "uploads/x/data" };
    const run = drive(machineOf(null), fill(), { stored, computed: `sha256:${"e".repeat(64)}` });
    expect(types(run)).toEqual(["find-stored", "hash"]);
    expect(run.outcome).toMatchObject({ error: { code: "DIGEST_INVALID" } });
  });

  it("a new digest goes through the engine in fill-sized parts, native hash, as a once-only upload", () => {
    const run = drive(machineOf(null), fill(), { body: { end: ended(300, null) } });
    expect(saves(run)[0]?.upload).toMatchObject({ uploadId: "f1", partSize: FILL_PART_BYTES, offset: 0 });
    expect(run.effects[2]).toMatchObject({ type: "receive", hash: { native: "sha256" }, partSize: FILL_PART_BYTES });
    expect(types(run).slice(-2)).toEqual(["commit-blob", "wipe"]);
  });

  it("a stale session (a fill that died part-way) is purged first; a fill with no bytes is refused", () => {
    const stale = drive(machineOf(upload({ multipartUploadId: "mp-1" })), fill(false));
    expect(types(stale)).toEqual(["abort-multipart", "forget-multipart", "wipe", "find-stored"]);
    expect(errorOf(stale).code).toBe("SIZE_INVALID");
  });
});
