import { MAX_PARTS } from "../settings/settings";
import { RegistryError } from "../oci/errors";
import type { FinishedBlob } from "../registry/blob-commit";
import { Paths } from "../registry/paths";
import { purge, raise } from "./upload-failure";
import { aborted, abortMultipart, multipartCreated, tooManyParts, uploadPart } from "./upload-multipart";
import type {
  CommitPhase,
  Completed,
  Machine,
  PartBytes,
  Phase,
  Step,
  UploadEffect,
  UploadEvent,
} from "./upload-state";
import { end, loaded, next, pending, required, tailStart, unexpected, withUpload } from "./upload-steps";

/**
 * A commit's rules, from the verified digest to the published blob: a digest that does
 * not match; a digest stored already (its stored copy is used: one object per digest);
 * making the upload's bytes one object with no copy (the tail is its last part, or the
 * whole object); a completion retried after its answer was lost; and publishing, which a
 * retry repeats alone once the object is finished.
 */

/** The digest of what was received is known: it must be the one the client named. */
export function digestChecked(machine: Machine, computed: string): Step {
  const upload = loaded(machine);
  const { digest, mode, hasBody } = pending(machine);
  const expected = required(digest).value;
  if (computed !== expected)
    return raise(machine, new RegistryError("DIGEST_INVALID", undefined, { digest: expected, computed }));
  if (mode === "whole" || !hasBody) return complete(machine, []);
  // The last chunk is in and verified: a retry of this PUT must not append it again.
  const marked = { ...upload, verified: { digest: expected, offset: upload.offset } };
  return complete(withUpload(machine, marked), [{ type: "save", upload: marked }]);
}

/** The digest is verified: the blob stored already is used (one object per digest), or ours is finished. */
export function complete(machine: Machine, effects: UploadEffect[]): Step {
  return next(machine, { at: "finding" }, [
    ...effects,
    { type: "find-stored", digest: required(pending(machine).digest) },
  ]);
}

/**
 * Makes the upload's bytes one R2 object. Whole parts are in R2 already; only the tail is
 * written now, as the last part, or as the whole object for a blob smaller than a part.
 */
export function finish(machine: Machine, then: "complete" | "verify-object", effects: UploadEffect[]): Step {
  let upload = loaded(machine);
  const size = upload.offset - tailStart(upload);
  const prepare: UploadEffect[] = [...effects, { type: "read-tail", from: tailStart(upload), size }];
  const previous = upload.completing;
  const digest = required(pending(machine).digest).value;
  if (upload.parts.length > 0 && previous !== digest) {
    upload = { ...upload, completing: digest };
    prepare.push({ type: "save", upload });
  }
  return next(withUpload(machine, upload), { at: "finishing", step: "preparing", previous, then }, prepare);
}

/**
 * The object is made in steps: the tail read (and `completing` saved), then one put, or
 * the tail as the last part and the completion. A failed completion whose digest was
 * attempted before is checked against the object it may have made.
 */
export function finishing(machine: Machine, phase: Extract<Phase, { at: "finishing" }>, event: UploadEvent): Step {
  const upload = loaded(machine);
  const key = Paths.uploadData(upload.uploadId);
  const tail: PartBytes = { tail: { from: tailStart(upload), size: upload.offset - tailStart(upload) } };
  if (event.type === "failed") {
    if (phase.step !== "uploading-tail" && phase.step !== "completing") return raise(machine, event.error);
    // An earlier attempt at this same digest may have completed the upload and lost the
    // answer: then the object is there, whole, and holds these very bytes.
    if (phase.previous !== required(pending(machine).digest).value) return raise(machine, event.error);
    return next(machine, { ...phase, step: "checking", error: event.error }, [{ type: "head-object", key }]);
  }
  if (phase.step === "preparing" && event.type === "done") {
    if (upload.parts.length === 0) {
      // A single put replaces whatever an earlier attempt wrote: idempotent.
      return next(machine, { ...phase, step: "writing" }, [{ type: "put-object", key, bytes: tail }]);
    }
    if (tail.tail.size === 0) return completeMultipart(machine, phase);
    const uploading = { ...phase, step: "uploading-tail" as const };
    if (upload.parts.length >= MAX_PARTS)
      return finishing(machine, uploading, { type: "failed", error: tooManyParts(upload) });
    return next(machine, uploading, uploadPart(upload, tail));
  }
  if (phase.step === "writing" && event.type === "done") return finished(machine, phase.then, []);
  if (phase.step === "uploading-tail" && event.type === "multipart-created") {
    return multipartCreated(machine, event.uploadId, tail);
  }
  if (phase.step === "uploading-tail" && event.type === "part-uploaded") {
    return completeMultipart(withUpload(machine, { ...upload, parts: [...upload.parts, event.part] }), phase);
  }
  const checked = phase.step === "checking" && event.type === "object-size";
  if (checked && event.size !== upload.offset) return raise(machine, phase.error);
  if (checked || (phase.step === "completing" && event.type === "done")) {
    // Finished: there is no multipart upload left to abort (R2 refuses an abort of a completed one).
    return finished(aborted(machine), phase.then, [{ type: "forget-multipart" }]);
  }
  return unexpected(machine, event);
}

/** Every part is up: R2 joins them into the upload's object (no copy). */
export function completeMultipart(machine: Machine, phase: Extract<Phase, { at: "finishing" }>): Step {
  const upload = loaded(machine);
  if (!upload.multipartUploadId) return raise(machine, new Error("an upload with parts has no multipart upload"));
  const multipart = { key: Paths.uploadData(upload.uploadId), uploadId: upload.multipartUploadId };
  return next(machine, { ...phase, step: "completing" }, [
    { type: "complete-multipart", multipart, parts: upload.parts },
  ]);
}

/** The upload's own object is finished: completed, or (sha512) read back for its digest first. */
export function finished(machine: Machine, then: "complete" | "verify-object", effects: UploadEffect[]): Step {
  const upload = loaded(machine);
  const { digest } = pending(machine);
  const object: Completed = {
    digest: required(digest).value,
    size: upload.offset,
    key: Paths.uploadData(upload.uploadId),
  };
  if (then === "complete") return markCompleted(machine, object, effects);
  const hash: UploadEffect = { type: "hash", of: { object, algorithm: required(digest).algorithm } };
  return next(machine, { at: "verifying-object", key: object.key }, [...effects, hash]);
}

/** The bytes are one verified object (ours, or the stored copy): recorded before publishing, so a retry only publishes. */
export function markCompleted(machine: Machine, completed: Completed, effects: UploadEffect[]): Step {
  const upload = { ...loaded(machine), completed, multipartUploadId: undefined };
  return publish(withUpload(machine, upload), [...effects, { type: "save", upload, clearTail: true }], true);
}

/**
 * The finished blob goes to the registry (`commitBlob`: stored under its digest and linked):
 * one effect. `first`: this request finished the object, so no earlier publish can have
 * named it.
 */
export function publish(machine: Machine, effects: UploadEffect[], first: boolean): Step {
  const upload = loaded(machine);
  const { name, digest, context } = pending(machine);
  const completed = upload.completed;
  if (!completed) return raise(machine, new Error("publish before the upload completed"));
  const own = completed.key === Paths.uploadData(upload.uploadId);
  const blob: FinishedBlob = { object: own ? "own" : "duplicate", size: completed.size, key: completed.key };
  const commitBlob: UploadEffect = { type: "commit-blob", repository: name, digest: required(digest), blob, context };
  return next(machine, { at: "publishing", first }, [...effects, commitBlob]);
}

/**
 * Whether the registry refused for good (a 4xx: a policy such as a quota, or
 * BLOB_UPLOAD_INVALID), as opposed to failing in a way a retry can get past (a 503).
 */
export function refusedForGood(error: unknown): error is RegistryError {
  return error instanceof RegistryError && error.status < 500;
}

/**
 * The registry refused to publish: the upload ends, and leaves nothing. A change policy's
 * refusal (a quota: the check comes before any write) of this request's own object, which
 * no earlier publish can have named, deletes the object; a refusal of a retry leaves it to
 * the sweep of objects no descriptor names (an earlier attempt's publish may have landed).
 * BLOB_UPLOAD_INVALID means its bytes are gone or being collected already.
 */
function publishRefused(machine: Machine, phase: Extract<Phase, { at: "publishing" }>, error: RegistryError): Step {
  const upload = loaded(machine);
  const own = upload.completed?.key === Paths.uploadData(upload.uploadId);
  if (error.code !== "BLOB_UPLOAD_INVALID" && phase.first && own) {
    return next(machine, { at: "discarding", error }, [
      { type: "delete-object", key: Paths.uploadData(upload.uploadId) },
    ]);
  }
  return purge(machine, { raise: error }, false);
}

/** The answers a commit waits for, phase by phase. */
export function commitAnswer(machine: Machine, phase: CommitPhase, event: UploadEvent): Step {
  if (phase.at === "finishing") return finishing(machine, phase, event);
  // Deleted or not (then the sweep of objects no descriptor names takes it), the refusal stands.
  if (phase.at === "discarding") return purge(machine, { raise: phase.error }, true);
  if (event.type === "failed") {
    // Refused for good (a policy such as a quota; its bytes gone or being collected; the
    // stored copy it duplicated changed meanwhile): the upload ends, and the client uploads again.
    if (phase.at === "publishing" && refusedForGood(event.error)) return publishRefused(machine, phase, event.error);
    return raise(machine, event.error);
  }
  switch (phase.at) {
    case "verifying":
      if (event.type === "hashed") return digestChecked(machine, event.computed);
      break;
    case "finding":
      if (event.type !== "found") break;
      if (event.descriptor) {
        return next(machine, { at: "deduplicating", existing: event.descriptor }, abortMultipart(machine));
      }
      return finish(machine, "complete", []);
    case "deduplicating": {
      const { digest, size, key } = phase.existing;
      return markCompleted(aborted(machine), { digest, size, key }, [{ type: "forget-multipart" }]);
    }
    case "verifying-object": {
      if (event.type !== "hashed") break;
      const digest = required(pending(machine).digest).value;
      const object = { digest, size: loaded(machine).offset, key: phase.key };
      if (event.computed === digest) return markCompleted(machine, object, []);
      const error = new RegistryError("DIGEST_INVALID", undefined, { digest, computed: event.computed });
      return next(machine, { at: "dropping-object", error }, [{ type: "delete-object", key: phase.key }]);
    }
    case "dropping-object":
      return purge(machine, { raise: phase.error }, false);
    case "publishing":
      if (event.type !== "committed") break;
      return end({ ...machine, upload: null }, { value: event.descriptor }, [{ type: "wipe" }]);
  }
  return unexpected(machine, event);
}
