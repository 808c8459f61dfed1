import { MIN_PART_BYTES } from "../settings/settings";
import { RegistryError } from "../oci/errors";
import { SYSTEM_CONTEXT } from "../registry/changes";
import type {
  ChunkDeclaration,
  Machine,
  Outcome,
  Pending,
  Phase,
  SessionStatus,
  Step,
  UploadEffect,
  UploadEvent,
  UploadState,
} from "./upload-state";

/**
 * How the core's steps are made, and what they read: the small functions every part of
 * the core (upload-machine.ts, upload-commit.ts, upload-failure.ts, upload-multipart.ts)
 * builds its answers with. A step moves the pending request to its next phase with the
 * effects to run (`next`), or ends it with an outcome (`end`).
 */

/** Absolute offset where the staged tail (bytes past the last whole part) starts. */
export function tailStart(upload: UploadState): number {
  return upload.parts.length * upload.partSize;
}

/**
 * A new upload. Its part size is fixed for its life (every part but the last is that
 * size, as R2 multipart requires) and never under R2's minimum (the settings refuse a
 * smaller UPLOAD_PART_SIZE; this holds it for any caller).
 */
export function freshUpload(event: {
  uploadId: string;
  name: string;
  partSize: number;
  hashState: Uint8Array;
  now: number;
}): UploadState {
  const { uploadId, name, partSize, hashState, now } = event;
  const size = Math.max(MIN_PART_BYTES, partSize);
  return { uploadId, name, startedAt: now, updatedAt: now, partSize: size, offset: 0, parts: [], hashState };
}

/** What GET of the upload reports. */
export function statusOf(upload: UploadState): SessionStatus {
  return { uploadId: upload.uploadId, name: upload.name, offset: upload.offset, startedAt: upload.startedAt };
}

export function unknownUpload(): RegistryError {
  return new RegistryError("BLOB_UPLOAD_UNKNOWN");
}

/** A request, as it starts: no mode, not once-only, made by the registry unless the event says who. */
export function request(
  event: { name: string; declared?: ChunkDeclaration; hasBody?: boolean; digest?: Pending["digest"] },
  kind: Pending["kind"],
): Pending {
  return {
    kind,
    name: event.name,
    digest: event.digest,
    declared: event.declared ?? {},
    hasBody: event.hasBody ?? false,
    once: false,
    context: SYSTEM_CONTEXT,
    phase: { at: "start" },
  };
}

export function withRequest(machine: Machine, request: Pending): Machine {
  return { ...machine, request };
}

export function withUpload(machine: Machine, upload: UploadState): Machine {
  return { ...machine, upload };
}

/** The pending request with `changes`. */
export function update(machine: Machine, changes: Partial<Pending>): Machine {
  return { ...machine, request: { ...pending(machine), ...changes } };
}

/** The request goes on: into `phase`, once `effects` ran (the last one's answer is the next event). */
export function next(machine: Machine, phase: Phase, effects: UploadEffect[]): Step {
  return { machine: update(machine, { phase }), effects };
}

/** The request ends with `outcome`, once `effects` ran (a failing one ends it with its failure instead). */
export function end(machine: Machine, outcome: Outcome, effects: UploadEffect[] = []): Step {
  return { machine: { ...machine, request: null }, effects, outcome };
}

/** The request in progress; the shell only sends answers while there is one. */
export function pending(machine: Machine): Pending {
  if (!machine.request) throw new Error("no request in progress");
  return machine.request;
}

export function loaded(machine: Machine): UploadState {
  if (!machine.upload) throw new Error("no upload state");
  return machine.upload;
}

/** A field the request's phase guarantees (a commit's digest, a chunk's state before it). */
export function required<T>(value: T | undefined): T {
  if (value === undefined) throw new Error("a value the request needs is missing");
  return value;
}

/** An answer the phase does not expect: a bug in the core or its shell, ended as an internal error. */
export function unexpected(machine: Machine, event: UploadEvent): Step {
  const where = machine.request ? `${machine.request.kind} at ${machine.request.phase.at}` : "no request";
  return end(machine, { error: new Error(`upload machine: ${event.type} is not expected (${where})`) });
}
