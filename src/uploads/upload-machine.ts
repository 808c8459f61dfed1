import { MAX_PARTS } from "../settings/settings";
import { RegistryError, unavailable } from "../oci/errors";
import type { FinishedBlob } from "../registry/blob-commit";
import { commitAnswer, complete, finish, publish, refusedForGood } from "./upload-commit";
import { purge, purging, raise, refuseChunk, rollingBack } from "./upload-failure";
import { multipartCreated, tooManyParts, uploadPart } from "./upload-multipart";
import type {
  ChunkDeclaration,
  Machine,
  MultipartRef,
  Outcome,
  Pending,
  Step,
  UploadEffect,
  UploadEvent,
  UploadState,
} from "./upload-state";
import {
  end,
  freshUpload,
  loaded,
  next,
  pending,
  request,
  required,
  statusOf,
  tailStart,
  unexpected,
  unknownUpload,
  update,
  withRequest,
  withUpload,
} from "./upload-steps";

/**
 * The upload engine's decisions, as a pure function: `transition(machine, event)` gives
 * the next state, the effects to run and, when the request is over, its outcome. No
 * storage, no bytes: the shell (upload-session.ts) streams the body, feeds the hash and
 * runs the effects, and hands every answer back as the next event. Every rule of an
 * upload lives here: where a chunk must start, what its length must be, where parts are
 * cut and when the tail is staged, what a commit does with a digest that does not match,
 * a digest stored already, or a retry after an answer that was lost.
 */

/** Part size of mirror fills: the largest fill is 10 000 of them (78 GiB). */
export const FILL_PART_BYTES = 8 * 1024 * 1024;

const NO_REQUEST: Machine = { upload: null, recorded: null, request: null };

/** The core as a request finds it: the saved state and the recorded multipart upload, nothing pending. */
export function initialMachine(upload: UploadState | null, recorded: MultipartRef | null): Machine {
  return { ...NO_REQUEST, upload, recorded };
}

/**
 * Whether a body has carried more than it may (its declared length, or the chunk limit):
 * the reader stops there, and the chunk is refused (`body-ended`).
 */
export function readsPast(declared: ChunkDeclaration, received: number): boolean {
  return (
    (declared.length !== undefined && received > declared.length) ||
    (declared.limit !== undefined && received > declared.limit)
  );
}

/** The upload's status, for `name`'s GET. */
export function status(upload: UploadState | null, name: string): Outcome {
  if (!upload || upload.name !== name) return { error: unknownUpload() };
  return { value: statusOf(upload) };
}

/** The core: the next state, the effects to run, and (when the request is over) its outcome. */
export function transition(machine: Machine, event: UploadEvent): Step {
  switch (event.type) {
    case "start": {
      const upload = freshUpload(event);
      return {
        machine: { ...machine, upload },
        effects: [{ type: "save", upload }],
        outcome: { value: statusOf(upload) },
      };
    }
    case "append": {
      const upload = machine.upload;
      if (!upload || upload.name !== event.name) return end(machine, { error: unknownUpload() });
      if (upload.completed) {
        const error = new RegistryError("BLOB_UPLOAD_INVALID", "the upload is already complete; PUT to commit it");
        return end(machine, { error });
      }
      return beginChunk(withRequest(machine, { ...request(event, "append"), mode: "append" }));
    }
    case "commit":
      return commit(machine, event);
    case "fill": {
      const fresh = freshUpload({ ...event, partSize: Math.min(FILL_PART_BYTES, event.uploadPartSize) });
      const filling = withRequest(machine, { ...request(event, "fill"), context: event.context, fresh });
      // First: is the digest stored meanwhile?
      const find: UploadEffect = { type: "find-stored", digest: event.digest };
      const lookup = { phase: { at: "fill-lookup" } as const, effects: [find] };
      // A fill that died part-way (the object was reset): its multipart upload goes first.
      if (machine.upload) return purge(filling, { next: lookup }, true);
      return next(filling, lookup.phase, lookup.effects);
    }
    case "cancel": {
      if (!machine.upload || machine.upload.name !== event.name) return end(machine, { error: unknownUpload() });
      return purge(withRequest(machine, request(event, "cancel")), { end: { value: null } }, false);
    }
    case "expire": {
      const upload = machine.upload;
      if (!upload) return end(machine, { value: undefined });
      const expiresAt = upload.updatedAt + event.ttlMs;
      if (event.busy || expiresAt > event.now) {
        return end(machine, { value: undefined }, [{ type: "set-alarm", at: Math.max(event.now + 1000, expiresAt) }]);
      }
      const expiring = withRequest(machine, request({ name: upload.name }, "expire"));
      return purge(expiring, { end: { value: undefined } }, false);
    }
    default:
      return answer(machine, event);
  }
}

/**
 * PUT ?digest= (or POST ?digest= with the body): the whole blob in this request, the last
 * chunk of a chunked upload, or nothing more. Retrying a commit that failed is safe:
 * before the object is finished the upload is as it was before the request (or at a
 * durable point a GET reports); after, the retry only publishes.
 */
function commit(machine: Machine, event: Extract<UploadEvent, { type: "commit" }>): Step {
  const upload = machine.upload;
  if (!upload || upload.name !== event.name) return end(machine, { error: unknownUpload() });
  const committing = withRequest(machine, { ...request(event, "commit"), once: event.once, context: event.context });
  const digest = event.digest.value;
  if (upload.completed) {
    if (upload.completed.digest !== digest) {
      const detail = { digest, completed: upload.completed.digest };
      return raise(
        committing,
        new RegistryError("DIGEST_INVALID", "the upload was already completed under another digest", detail),
      );
    }
    // The bytes were received and verified by the earlier attempt.
    return publish(committing, [{ type: "discard-body" }], false);
  }
  const size = event.admits ? sizeKnownBefore(upload, event) : undefined;
  if (size === undefined) return receiveCommit(committing);
  // Known before any byte is read: the registry's policies (a quota) may refuse it now,
  // before anything of it is stored.
  const admit: UploadEffect = {
    type: "admit-upload",
    repository: event.name,
    digest: event.digest,
    size,
    context: event.context,
  };
  return next(committing, { at: "admitting" }, [admit]);
}

/**
 * The size a commit's blob will have, when known before its body is read: the bytes
 * received so far plus the body's declared length (none: the offset), or undefined for a
 * body of unknown length.
 */
function sizeKnownBefore(upload: UploadState, event: Extract<UploadEvent, { type: "commit" }>): number | undefined {
  if (!event.hasBody || isVerifiedRetry(upload, event.digest.value)) return upload.offset;
  return event.declared.length === undefined ? undefined : upload.offset + event.declared.length;
}

/** A retry of a PUT whose last chunk arrived and was verified, and whose commit then failed. */
function isVerifiedRetry(upload: UploadState, digest: string): boolean {
  return upload.verified?.digest === digest && upload.verified.offset === upload.offset;
}

/** The commit's bytes: the whole blob in this request, or its last chunk (or none). */
function receiveCommit(machine: Machine): Step {
  const upload = loaded(machine);
  const { hasBody, digest } = pending(machine);
  if (hasBody && upload.offset === 0) {
    // The whole blob in the request that commits it: hashed natively, all or nothing.
    return beginChunk(update(machine, { mode: "whole", beforeRequest: upload }));
  }
  const last = update(machine, { mode: "last" });
  if (hasBody && isVerifiedRetry(upload, required(digest).value)) {
    // The chunk is in already, and appending it again would corrupt the upload.
    return complete(last, [{ type: "discard-body" }]);
  }
  return beginChunk(last);
}

/**
 * The registry's answer before a commit's bytes are read: go ahead; refused (a quota),
 * and then the upload ends with nothing of it kept (its parts, its staged tail); or it
 * could not be asked (503), and the upload stays as it was for a retry.
 */
function admitted(machine: Machine, event: UploadEvent): Step {
  if (event.type === "done") return receiveCommit(machine);
  if (event.type !== "failed") return unexpected(machine, event);
  if (refusedForGood(event.error)) {
    const purged = purge(machine, { end: { error: event.error } }, true);
    return { ...purged, effects: [{ type: "discard-body" }, ...purged.effects] };
  }
  return raise(machine, event.error, [{ type: "discard-body" }]);
}

/** A chunk arrives: it must start at the offset; a body is read into parts from the staged tail on. */
function beginChunk(machine: Machine): Step {
  const upload = loaded(machine);
  const { declared, hasBody, mode, digest } = pending(machine);
  if (declared.start !== undefined && declared.start !== upload.offset) {
    const detail = { offset: upload.offset, start: declared.start };
    return raise(machine, new RegistryError("RANGE_INVALID", "chunk does not start at the upload's offset", detail));
  }
  if (!hasBody) {
    if (declared.length) return raise(machine, new RegistryError("SIZE_INVALID", "declared length but no body"));
    return chunkReceived(machine, []);
  }
  const receive: UploadEffect = {
    type: "receive",
    partSize: upload.partSize,
    bufferStart: tailStart(upload),
    tailSize: upload.offset - tailStart(upload),
    declared,
    hash: mode === "whole" ? { native: required(digest).algorithm } : { resumable: upload.hashState },
  };
  return next(update(machine, { beforeChunk: upload }), { at: "receiving" }, [receive]);
}

/** The body ended: it must have carried what it declared; the bytes past the last part are staged. */
function bodyEnded(machine: Machine, received: number, hashState: Uint8Array | null): Step {
  const { declared, beforeChunk } = pending(machine);
  const before = required(beforeChunk);
  // The reader stops at the first read past either bound; past the declared length it is a length mismatch.
  const pastLength = declared.length !== undefined && received > declared.length;
  if (declared.limit !== undefined && received > declared.limit && !pastLength) {
    // The answer's text is the routes' (chunkTooLarge): the session says which limit.
    const error = new RegistryError(
      "SIZE_INVALID",
      "the request body is over the chunk limit",
      { limit: declared.limit },
      {},
      413,
    );
    return refuseChunk(machine, error);
  }
  if (declared.length !== undefined && received !== declared.length) {
    const detail = { declared: declared.length, received, offset: before.offset };
    const message = "the body's length does not match Content-Length / Content-Range";
    return refuseChunk(machine, new RegistryError("SIZE_INVALID", message, detail));
  }
  const upload: UploadState = { ...loaded(machine), offset: before.offset + received };
  if (!hashState) return chunkReceived(withUpload(machine, upload), []);
  // One transaction: the new offset and hash state, and the tail's new bytes.
  const saved = { ...upload, hashState };
  const from = Math.max(before.offset, tailStart(saved));
  const stage = { pruneBefore: tailStart(saved), from, to: saved.offset };
  return chunkReceived(withUpload(machine, saved), [{ type: "save", upload: saved, stage }]);
}

/**
 * The body broke off. A storage failure, or a body hashed natively (nothing continues
 * from it), puts the upload back as it was; otherwise the last durable point is kept
 * (the parts that completed: the failed read took the part buffer with it) and the
 * client resumes from it.
 */
function bodyFailed(machine: Machine, error: unknown, partError?: { error: unknown }): Step {
  const upload = loaded(machine);
  let storageError = error instanceof RegistryError ? error : null;
  if (partError) {
    storageError ??= partError.error instanceof RegistryError ? partError.error : unavailable("storage failed; retry");
  }
  if (storageError || pending(machine).mode === "whole") {
    const broke = new RegistryError("BLOB_UPLOAD_INVALID", "the request body broke off; retry the request", {
      cause: String(error),
    });
    return refuseChunk(machine, storageError ?? broke);
  }
  const message = "the request body broke off; GET the upload for its offset and resume";
  const resume = new RegistryError("BLOB_UPLOAD_INVALID", message, { offset: upload.offset, cause: String(error) });
  return raise(machine, resume, [{ type: "save", upload }]);
}

/** The chunk is in: a PATCH answers; a commit verifies the digest. */
function chunkReceived(machine: Machine, effects: UploadEffect[]): Step {
  const upload = loaded(machine);
  const { mode, digest } = pending(machine);
  if (mode === "append") return end(machine, { value: statusOf(upload) }, effects);
  if (mode === "whole") return next(machine, { at: "verifying" }, [...effects, { type: "hash", of: "body" }]);
  if (required(digest).algorithm === "sha256") {
    // From the saved state: no byte is read again.
    return next(machine, { at: "verifying" }, [...effects, { type: "hash", of: { state: upload.hashState } }]);
  }
  // Other algorithms (sha512) are rare; tracking them on every chunked upload would halve
  // throughput, so the finished object is read once, and a mismatch ends the upload.
  return finish(machine, "verify-object", effects);
}

/** Part by part while the body streams: the part goes up, then its durable point is saved. */
function partAnswer(machine: Machine, event: UploadEvent, part: NonNullable<Pending["part"]>): Step {
  const upload = loaded(machine);
  switch (event.type) {
    case "multipart-created":
      return multipartCreated(machine, event.uploadId, { part: part.bytes });
    case "part-uploaded": {
      const parts = [...upload.parts, event.part];
      const uploaded = { ...upload, parts, offset: parts.length * upload.partSize };
      const done = update(withUpload(machine, uploaded), { part: undefined });
      if (!part.hashState) return { machine: done, effects: [], outcome: { value: undefined } };
      // A durable point: the rows of the old tail stay until the request succeeds, so a
      // refused chunk can still fall back to them.
      const saved = { ...uploaded, hashState: part.hashState };
      return {
        machine: withUpload(done, saved),
        effects: [{ type: "save", upload: saved }],
        outcome: { value: undefined },
      };
    }
    case "failed":
      return { machine: update(machine, { part: undefined }), effects: [], outcome: { error: event.error } };
    default:
      return unexpected(machine, event);
  }
}

/** A full part buffer from the reader: the next part, unless the upload has as many as R2 takes. */
function partFull(machine: Machine, bytes: Uint8Array, hashState: Uint8Array | null): Step {
  const upload = loaded(machine);
  if (upload.parts.length >= MAX_PARTS) return { machine, effects: [], outcome: { error: tooManyParts(upload) } };
  return { machine: update(machine, { part: { bytes, hashState } }), effects: uploadPart(upload, { part: bytes }) };
}

/** An effect's answer (or the reader's news) goes to the part of the core the request is in. */
function answer(machine: Machine, event: UploadEvent): Step {
  const request = pending(machine);
  if (request.part) return partAnswer(machine, event, request.part);
  const phase = request.phase;
  switch (phase.at) {
    case "receiving":
      if (event.type === "part-full") return partFull(machine, event.bytes, event.hashState);
      if (event.type === "body-ended") return bodyEnded(machine, event.received, event.hashState);
      if (event.type === "body-failed") return bodyFailed(machine, event.error, event.partError);
      // Reading failed before the body did (the staged tail is missing).
      if (event.type === "failed") return raise(machine, event.error);
      break;
    case "admitting":
      return admitted(machine, event);
    case "verifying":
    case "finding":
    case "deduplicating":
    case "finishing":
    case "verifying-object":
    case "dropping-object":
    case "publishing":
    case "discarding":
      return commitAnswer(machine, phase, event);
    case "purging":
      return purging(machine, phase, event);
    case "rolling-back":
      return rollingBack(machine, phase, event);
    case "fill-lookup":
    case "fill-verifying":
    case "fill-linking":
    case "fill-starting":
      return fillAnswer(machine, event);
    case "start":
      break;
  }
  return unexpected(machine, event);
}

/**
 * A fill's digest is stored meanwhile (linked once the fill's bytes hashed to it, nothing
 * stored again), or its bytes start a once-only upload.
 */
function fillAnswer(machine: Machine, event: UploadEvent): Step {
  const request = pending(machine);
  if (event.type === "failed") return end(machine, { error: event.error });
  const phase = request.phase.at;
  if (phase === "fill-lookup" && event.type === "found") {
    if (!request.hasBody)
      return end(machine, { error: new RegistryError("SIZE_INVALID", "a fill needs the blob's bytes") });
    if (event.descriptor) {
      // Stored by a push, perhaps to a private repository: linked under the mirrored name
      // only once the upstream's bytes proved it has the same blob.
      const algorithm = required(request.digest).algorithm;
      return next(machine, { at: "fill-verifying", stored: event.descriptor }, [
        { type: "hash", of: { drained: algorithm } },
      ]);
    }
    const fresh = required(request.fresh);
    return next(withUpload(machine, fresh), { at: "fill-starting" }, [{ type: "save", upload: fresh }]);
  }
  if (request.phase.at === "fill-verifying" && event.type === "hashed") {
    const digest = required(request.digest);
    if (event.computed !== digest.value) {
      return end(machine, {
        error: new RegistryError("DIGEST_INVALID", undefined, { digest: digest.value, computed: event.computed }),
      });
    }
    const blob: FinishedBlob = { object: "stored", descriptor: request.phase.stored };
    const link: UploadEffect = {
      type: "commit-blob",
      repository: request.name,
      digest,
      blob,
      context: request.context,
    };
    return next(machine, { at: "fill-linking" }, [link]);
  }
  if (phase === "fill-linking" && event.type === "committed") return end(machine, { value: event.descriptor });
  if (phase === "fill-starting" && event.type === "done") {
    // The bytes go through the engine as a monolithic upload's do: all or nothing.
    return beginChunk(update(machine, { mode: "whole", once: true, beforeRequest: loaded(machine) }));
  }
  return unexpected(machine, event);
}
