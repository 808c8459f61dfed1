import type { AfterPurge, Machine, Phase, Step, UploadEffect, UploadEvent, UploadState } from "./upload-state";
import { abortMultipart, aborted } from "./upload-multipart";
import { end, loaded, next, pending, required, withUpload } from "./upload-steps";

/**
 * How an upload request fails, and how an upload ends: a refused chunk puts the upload
 * back as it was; a whole-blob request leaves nothing; an upload made for one request
 * only is purged with it; a purge aborts the multipart upload and drops the session.
 */

/**
 * A request fails with `error`. A whole-blob request that had not finished its object
 * leaves nothing, not even its multipart upload (a retry with other bytes must never meet
 * parts or an object of these); an upload that exists for this request only is purged.
 */
export function raise(machine: Machine, error: unknown, effects: UploadEffect[] = []): Step {
  const request = pending(machine);
  const upload = machine.upload;
  if (request.mode === "whole" && upload && !upload.completed && request.beforeRequest) {
    // The abort is best effort: if it fails, the state goes back all the same (see rollingBack).
    return next(machine, { at: "rolling-back", step: "aborting", error }, [...effects, ...abortMultipart(machine)]);
  }
  return fail(machine, error, effects);
}

/** The failure after any rollback: an upload made for this request only is purged (best effort). */
export function fail(machine: Machine, error: unknown, effects: UploadEffect[]): Step {
  if (pending(machine).once) {
    const purged = purge(machine, { end: { error } }, true);
    return { ...purged, effects: [...effects, ...purged.effects] };
  }
  return end(machine, { error }, effects);
}

/**
 * Puts the upload back as it was before the chunk, keeping a multipart upload the chunk
 * created (its parts are overwritten by the next ones, which reuse their numbers; purge
 * aborts it) and the digest a completion was attempted for.
 */
export function restored(current: UploadState, before: UploadState): UploadState {
  const upload = { ...before };
  if (current.multipartUploadId) upload.multipartUploadId = current.multipartUploadId;
  if (current.completing) upload.completing = current.completing;
  return upload;
}

/** A chunk refused (wrong length, over the limit, a storage failure): the upload is saved as it was. */
export function refuseChunk(machine: Machine, error: unknown): Step {
  const upload = restored(loaded(machine), required(pending(machine).beforeChunk));
  return raise(withUpload(machine, upload), error, [{ type: "save", upload }]);
}

/** A whole-blob request's rollback: its multipart upload aborted (best effort), then the state before it saved. */
export function rollingBack(machine: Machine, phase: Extract<Phase, { at: "rolling-back" }>, event: UploadEvent): Step {
  if (phase.step === "restoring") return fail(machine, event.type === "failed" ? event.error : phase.error, []);
  const before = required(pending(machine).beforeRequest);
  if (event.type === "failed") {
    // The multipart upload may still be there: the state before names it, as it did.
    const upload = restored({ ...loaded(machine), multipartUploadId: undefined }, before);
    return next(withUpload(machine, upload), { ...phase, step: "restoring" }, [{ type: "save", upload }]);
  }
  // Aborted: the state before may name that very multipart upload (one a refused chunk
  // created and kept); it must not, or every later part would go to an upload R2 no longer has.
  const upload = { ...restored(loaded(aborted(machine)), before), multipartUploadId: undefined };
  const effects: UploadEffect[] = [{ type: "forget-multipart" }, { type: "save", upload }];
  return next(withUpload(aborted(machine), upload), { ...phase, step: "restoring" }, effects);
}

/**
 * Ends the upload: aborts its multipart upload (and one a request created but never
 * saved), then drops its record and staged tail. A finished object is left alone even if
 * it was never published: a publish whose answer was lost may still land, and deleting
 * the object under it would leave a descriptor naming nothing (`npm run verify --repair`
 * sweeps such objects once older than the upload TTL).
 */
export function purge(machine: Machine, after: AfterPurge, bestEffort: boolean): Step {
  return next(machine, { at: "purging", step: "aborting", after, bestEffort }, abortMultipart(machine));
}

/** The purge's steps: abort, then forget and wipe; a best-effort purge goes on whatever fails. */
export function purging(machine: Machine, phase: Extract<Phase, { at: "purging" }>, event: UploadEvent): Step {
  if (event.type === "failed") {
    if (!phase.bestEffort) return raise(machine, event.error);
    // If the purge fails, the object's alarm purges it later.
    return afterPurge(machine, phase.after);
  }
  if (phase.step === "aborting") {
    return next(aborted(machine), { ...phase, step: "wiping" }, [{ type: "forget-multipart" }, { type: "wipe" }]);
  }
  return afterPurge({ ...machine, upload: null, recorded: null }, phase.after);
}

/** Where a purge leads (AfterPurge). */
export function afterPurge(machine: Machine, after: AfterPurge): Step {
  if ("raise" in after) return raise(machine, after.raise);
  if ("end" in after) return end(machine, after.end);
  return next(machine, after.next.phase, after.next.effects);
}
