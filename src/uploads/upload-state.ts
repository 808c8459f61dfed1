import type { Digest, DigestAlgorithm } from "../oci/digest";
import type { BlobDescriptor } from "../registry/blob-store";
import type { FinishedBlob } from "../registry/blob-commit";
import type { ChangeContext } from "../registry/changes";

/**
 * The vocabulary of the upload engine's pure core (upload-machine.ts): the durable state
 * of one upload, the events that happen to it, and the effects the core asks its shell
 * (the UploadSession Durable Object) to run. Everything here is plain data: a test
 * writes a state as a literal and reads the effects back.
 */

/** The durable record of one upload, saved at every durable point. */
export interface UploadState {
  uploadId: string;
  name: string;
  startedAt: number;
  /** Stamped by the shell at every save (expiry counts from it). */
  updatedAt: number;
  partSize: number;
  /** Bytes received durably: whole parts plus the staged tail. */
  offset: number;
  /** R2 multipart upload writing Paths.uploadData(uploadId); created with the first whole part. */
  multipartUploadId?: string;
  parts: R2UploadedPart[];
  /** SHA-256 state after exactly `offset` bytes. */
  hashState: Uint8Array;
  /**
   * Set once the upload's bytes are one finished, verified R2 object (or the digest was
   * found already stored): a commit that failed after this point (publishing or linking)
   * is retried from here, without finishing the object twice.
   */
  completed?: Completed;
  /**
   * The digest a multipart completion was last attempted for, saved before the attempt.
   * A completion whose answer was lost may still have happened; a retry may take the
   * finished object as its own only when it completes the same digest (the same bytes),
   * never when other bytes arrived since.
   */
  completing?: string;
  /**
   * Set when a PUT's last chunk was appended and the whole upload verified against
   * `digest` at `offset`: a retry of that PUT (its commit failed later) must not append
   * the chunk again.
   */
  verified?: { digest: string; offset: number };
}

/** The finished object of an upload: its own (Paths.uploadData), or the stored copy it duplicates. */
export interface Completed {
  digest: string;
  size: number;
  key: string;
}

/** A multipart upload, by its object key and R2 upload id. */
export interface MultipartRef {
  key: string;
  uploadId: string;
}

/** How a request's body says it fits the upload (routes/uploads.ts reads it from Content-Range / Content-Length). */
export interface ChunkDeclaration {
  /** Offset the chunk starts at; must equal the upload's offset. */
  start?: number;
  /** Number of bytes the body carries, when the request declares it. */
  length?: number;
  /** The most bytes one request body may carry (MAX_CHUNK_LENGTH), enforced while reading. */
  limit?: number;
}

export interface SessionStatus {
  uploadId: string;
  name: string;
  offset: number;
  startedAt: number;
}

/**
 * The core's whole state: the durable record (null when there is none: never started,
 * purged, or published), the multipart upload recorded apart from it (see
 * `record-multipart`), and what the request in progress is doing (memory only).
 */
export interface Machine {
  upload: UploadState | null;
  recorded: MultipartRef | null;
  request: Pending | null;
}

/** What a `hash` effect hashes (see UploadEffect). */
export type HashTarget =
  "body" | { drained: DigestAlgorithm } | { state: Uint8Array } | { object: Completed; algorithm: DigestAlgorithm };

/** How a body's bytes are hashed: the runtime's native digest, or the resumable SHA-256 from a saved state. */
export type HashSource = { native: DigestAlgorithm } | { resumable: Uint8Array };

/** Bytes an effect writes: a part the reader cut (in memory), or the upload's tail. */
export type PartBytes = { part: Uint8Array } | { tail: { from: number; size: number } };

/** What a request is doing between two events (upload-machine.ts keeps it in `Machine.request`). */
export interface Pending {
  /** Which request it is (for the messages of an unexpected answer; decisions go by `mode`). */
  kind: "append" | "commit" | "fill" | "cancel" | "expire";
  name: string;
  digest?: Digest;
  declared: ChunkDeclaration;
  hasBody: boolean;
  /**
   * `whole`: the body is the whole blob (native hash, all or nothing); `last`: it
   * finishes a chunked upload (resumable hash); `append`: a PATCH.
   */
  mode?: "append" | "whole" | "last";
  /** The upload exists for this request only (POST ?digest=, a fill): it is purged if the request fails. */
  once: boolean;
  context: ChangeContext;
  /** For `whole`: the state to go back to if the request fails before the object is finished. */
  beforeRequest?: UploadState;
  /** The state before the chunk, to go back to when the chunk is refused. */
  beforeChunk?: UploadState;
  /** A part being uploaded while the body streams: its bytes and the hash state at its end. */
  part?: { bytes: Uint8Array; hashState: Uint8Array | null };
  /** For a fill: the upload to start, should the digest not be stored. */
  fresh?: UploadState;
  phase: Phase;
}

/**
 * What follows a purge: `raise` the error through the request's failure path, `end`
 * the request as it is, or go on to `next` (a fill's lookup after its stale session).
 */
export type AfterPurge = { raise: unknown } | { end: Outcome } | { next: { phase: Phase; effects: UploadEffect[] } };

/** Where a pending request is: the answer it waits for, and what it must remember until then. */
export type Phase =
  /** Not waiting yet: the request's first step is being taken. */
  | { at: "start" }
  /** The body is streaming (`part-full`, then `body-ended` or `body-failed`). */
  | { at: "receiving" }
  /** The digest of the bytes received (`hashed`) is awaited. */
  | { at: "verifying" }
  /** Whether the digest is stored already (`found`). */
  | { at: "finding" }
  /** Aborting our multipart upload: the blob is stored already, as `existing`. */
  | { at: "deduplicating"; existing: BlobDescriptor }
  /** Making the upload's bytes one object; `then`: what the finished object goes to. */
  | {
      at: "finishing";
      step: "preparing" | "writing" | "uploading-tail" | "completing" | "checking";
      /** `completing` as it was before this attempt. */
      previous?: string;
      /** The failure a `checking` head answers for. */
      error?: unknown;
      then: "complete" | "verify-object";
    }
  /** A sha512 upload's finished object is being read back for its digest. */
  | { at: "verifying-object"; key: string }
  /** A finished object of the wrong digest is being deleted. */
  | { at: "dropping-object"; error: unknown }
  /** Whether the registry lets a commit of a size known up front go ahead (`done`), before its bytes are read. */
  | { at: "admitting" }
  /**
   * The registry's `commitBlob` answer (`committed`) is awaited. `first`: no earlier request
   * published this upload's object (so a refusal may delete it: nothing can name it).
   */
  | { at: "publishing"; first: boolean }
  /** The registry refused to publish the upload's own object: it is being deleted before the purge. */
  | { at: "discarding"; error: unknown }
  /** Aborting the multipart uploads, then wiping the session; `after`: what follows. */
  | { at: "purging"; step: "aborting" | "wiping"; after: AfterPurge; bestEffort: boolean }
  /** A whole-blob request failed before its object was finished: its multipart upload goes, its state returns. */
  | { at: "rolling-back"; step: "aborting" | "restoring"; error: unknown }
  /** A fill: whether its digest is stored meanwhile (`found`). */
  | { at: "fill-lookup" }
  /**
   * A fill's digest is stored: its bytes are hashed first (`hashed`), since only bytes that
   * match prove the upstream has the blob (docs/architecture.md, "Mirroring").
   */
  | { at: "fill-verifying"; stored: BlobDescriptor }
  /** A fill's digest is stored and its bytes matched: the stored blob is being linked. */
  | { at: "fill-linking" }
  /** A fill's new upload is being saved before its bytes are read. */
  | { at: "fill-starting" };

/** The phases a commit waits in (upload-commit.ts answers them). */
export type CommitPhase = Extract<
  Phase,
  {
    at:
      | "verifying"
      | "finding"
      | "deduplicating"
      | "finishing"
      | "verifying-object"
      | "dropping-object"
      | "publishing"
      | "discarding";
  }
>;

/** What happens to an upload: a request arriving, or the answer of an effect the core asked for. */
export type UploadEvent =
  | { type: "start"; uploadId: string; name: string; partSize: number; hashState: Uint8Array; now: number }
  | { type: "append"; name: string; declared: ChunkDeclaration; hasBody: boolean }
  | {
      type: "commit";
      name: string;
      digest: Digest;
      declared: ChunkDeclaration;
      hasBody: boolean;
      once: boolean;
      context: ChangeContext;
      /**
       * The registry has policies that judge changes (a quota): a commit whose size is
       * known before its body is read asks them first (`admit-upload`).
       */
      admits?: boolean;
    }
  | {
      type: "fill";
      name: string;
      digest: Digest;
      declared: ChunkDeclaration;
      hasBody: boolean;
      context: ChangeContext;
      /** The new upload's id, the deployment's part size, an initial hash state and the time, should one start. */
      uploadId: string;
      uploadPartSize: number;
      hashState: Uint8Array;
      now: number;
    }
  | { type: "cancel"; name: string }
  | { type: "expire"; now: number; ttlMs: number; busy: boolean }
  // The byte path, from the reader (`receive`).
  /** The part buffer is full: `bytes` is the next part; `hashState` the hash after it (null: not resumable). */
  | { type: "part-full"; bytes: Uint8Array; hashState: Uint8Array | null }
  /** The body ended after `received` bytes; `hashState` after all of them (null: not resumable). */
  | { type: "body-ended"; received: number; hashState: Uint8Array | null }
  /** Reading the body failed (`error`), and the part upload in flight failed too (`partError`), or not. */
  | { type: "body-failed"; error: unknown; partError?: { error: unknown } }
  // Answers of effects.
  | { type: "done" }
  | { type: "failed"; error: unknown }
  | { type: "multipart-created"; uploadId: string }
  | { type: "part-uploaded"; part: R2UploadedPart }
  | { type: "hashed"; computed: string }
  | { type: "found"; descriptor: BlobDescriptor | null }
  | { type: "object-size"; size: number | null }
  | { type: "committed"; descriptor: BlobDescriptor };

/**
 * What the core asks the shell to do, in order. The answer of the last one (or `done`)
 * is the next event; a failure is a `failed` event, unless the effect is best effort.
 */
export type UploadEffect =
  /**
   * Saves the state (and re-arms expiry), with the staged tail's changes in the same
   * transaction: rows before `pruneBefore` dropped and the bytes `[from, to)` appended.
   */
  | { type: "save"; upload: UploadState; stage?: { pruneBefore: number; from: number; to: number }; clearTail?: true }
  /** Streams the body into parts (answers `body-ended` or `body-failed`; `part-full` on the way). */
  | {
      type: "receive";
      partSize: number;
      /** Absolute offset of the part buffer's start (the staged tail's, a part boundary). */
      bufferStart: number;
      /** Bytes of the staged tail, read into the buffer first. */
      tailSize: number;
      declared: ChunkDeclaration;
      hash: HashSource;
    }
  | { type: "discard-body" }
  /** Reads the tail `[from, from + size)` into memory, unless the request holds it already. */
  | { type: "read-tail"; from: number; size: number }
  | { type: "create-multipart"; key: string }
  /** Records a multipart upload apart from the state, at once: purge can abort it whatever was saved. */
  | { type: "record-multipart"; multipart: MultipartRef }
  | { type: "forget-multipart" }
  | { type: "upload-part"; multipart: MultipartRef; number: number; bytes: PartBytes }
  | { type: "complete-multipart"; multipart: MultipartRef; parts: R2UploadedPart[] }
  | { type: "abort-multipart"; multipart: MultipartRef; bestEffort?: true }
  | { type: "put-object"; key: string; bytes: PartBytes }
  | { type: "head-object"; key: string }
  | { type: "delete-object"; key: string }
  /**
   * The digest of: the body just read (its native hash), the request's whole body read now
   * (`drained`, natively), a saved SHA-256 state, or a stored object.
   */
  | { type: "hash"; of: HashTarget }
  /** Whether the digest is stored, with its bytes there (answers `found`). */
  | { type: "find-stored"; digest: Digest }
  /**
   * Asks the registry whether `size` bytes of `digest` may be committed to `repository`
   * (Repository.admitUpload: the change seam's policies, a quota): `done`, or `failed` with
   * the refusal.
   */
  | { type: "admit-upload"; repository: string; digest: Digest; size: number; context: ChangeContext }
  /** The registry layer's one call for a finished blob (answers `committed`). */
  | { type: "commit-blob"; repository: string; digest: Digest; blob: FinishedBlob; context: ChangeContext }
  /** Deletes the object's storage (record, staged tail, multipart record) and its alarm. */
  | { type: "wipe" }
  | { type: "set-alarm"; at: number };

/** How a request ends: a value for the client, or an error (a RegistryError, usually). */
export type Outcome = { value: unknown } | { error: unknown };

/** One step of the core: the next state, the effects to run, and the outcome once they ran. */
export interface Step {
  machine: Machine;
  effects: UploadEffect[];
  outcome?: Outcome;
}
