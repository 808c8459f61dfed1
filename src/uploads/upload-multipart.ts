import { MAX_PARTS } from "../settings/settings";
import { RegistryError } from "../oci/errors";
import { Paths } from "../registry/paths";
import type { Machine, PartBytes, Step, UploadEffect, UploadState } from "./upload-state";
import { loaded, withUpload } from "./upload-steps";

/**
 * R2 multipart's rules as the upload engine keeps them: parts are numbered from 1, each
 * after the last; at most MAX_PARTS of them; the multipart upload is created with the
 * first part and recorded at once; it is aborted when the upload ends without it.
 */

/** R2 multipart: the part after the last one, into the upload's multipart upload (created with the first part). */
export function uploadPart(upload: UploadState, bytes: PartBytes): UploadEffect[] {
  const key = Paths.uploadData(upload.uploadId);
  if (!upload.multipartUploadId) return [{ type: "create-multipart", key }];
  const multipart = { key, uploadId: upload.multipartUploadId };
  return [{ type: "upload-part", multipart, number: upload.parts.length + 1, bytes }];
}

/** The multipart upload exists: recorded, then the part that created it goes up. */
export function multipartCreated(machine: Machine, uploadId: string, bytes: PartBytes): Step {
  const upload = { ...loaded(machine), multipartUploadId: uploadId };
  const multipart = { key: Paths.uploadData(upload.uploadId), uploadId };
  // Recorded at once, whatever the request's hash saves: purge can always abort it.
  const recorded = { ...withUpload(machine, upload), recorded: multipart };
  return { machine: recorded, effects: [{ type: "record-multipart", multipart }, ...uploadPart(upload, bytes)] };
}

export function tooManyParts(upload: UploadState): RegistryError {
  const message = `blob exceeds the largest upload (${MAX_PARTS} parts of ${upload.partSize} bytes)`;
  return new RegistryError("SIZE_INVALID", message);
}

/** What aborting the upload's multipart uploads takes (`aborted` once it succeeded). */
export function abortMultipart(machine: Machine): UploadEffect[] {
  const upload = machine.upload;
  const effects: UploadEffect[] = [];
  // One created by a request whose state was not saved yet (a whole body hashed natively
  // saves nothing until it succeeds) and that never ended: the object was reset.
  if (machine.recorded && machine.recorded.uploadId !== upload?.multipartUploadId) {
    effects.push({ type: "abort-multipart", multipart: machine.recorded, bestEffort: true });
  }
  if (upload?.multipartUploadId) {
    const multipart = { key: Paths.uploadData(upload.uploadId), uploadId: upload.multipartUploadId };
    effects.push({ type: "abort-multipart", multipart });
  }
  return effects;
}

/** After `abortMultipart` succeeded: nothing left to abort. */
export function aborted(machine: Machine): Machine {
  const upload = machine.upload ? { ...machine.upload, multipartUploadId: undefined } : null;
  return { ...machine, upload, recorded: null };
}
