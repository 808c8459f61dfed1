/**
 * The error codes of the OCI distribution spec (plus the Docker ones clients know),
 * each with the HTTP status it is served with. Handlers throw a RegistryError; the
 * one error handler in app.ts renders `{"errors":[{code,message,detail}]}`.
 */
export const ErrorCodes = {
  BLOB_UNKNOWN: { status: 404, message: "blob unknown to registry" },
  BLOB_UPLOAD_INVALID: { status: 400, message: "blob upload invalid" },
  BLOB_UPLOAD_UNKNOWN: { status: 404, message: "blob upload unknown to registry" },
  DIGEST_INVALID: { status: 400, message: "provided digest did not match uploaded content" },
  MANIFEST_BLOB_UNKNOWN: { status: 400, message: "manifest references a manifest or blob unknown to registry" },
  MANIFEST_INVALID: { status: 400, message: "manifest invalid" },
  MANIFEST_UNKNOWN: { status: 404, message: "manifest unknown to registry" },
  NAME_INVALID: { status: 400, message: "invalid repository name" },
  NAME_UNKNOWN: { status: 404, message: "repository name not known to registry" },
  SIZE_INVALID: { status: 400, message: "provided length did not match content length" },
  TAG_INVALID: { status: 400, message: "manifest tag did not match URI" },
  UNAUTHORIZED: { status: 401, message: "authentication required" },
  DENIED: { status: 403, message: "requested access to the resource is denied" },
  UNSUPPORTED: { status: 405, message: "the operation is unsupported" },
  TOOMANYREQUESTS: { status: 429, message: "too many requests" },
  // Not in the spec's table, but distribution serves these and clients understand them.
  RANGE_INVALID: { status: 416, message: "requested range not satisfiable" },
  UNAVAILABLE: { status: 503, message: "storage temporarily unavailable, retry" },
  UNKNOWN: { status: 500, message: "unknown error" },
  PAGINATION_NUMBER_INVALID: { status: 400, message: "invalid number of results requested" },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ErrorCodes;

/** A failure a client caused or can act on, carrying its OCI code and status. */
export class RegistryError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly detail: unknown;
  /** Extra response headers (Range on a 416, Retry-After on a 503). */
  readonly headers: Record<string, string>;

  constructor(
    code: ErrorCode,
    message?: string,
    detail?: unknown,
    headers: Record<string, string> = {},
    /** A status other than the code's usual one (a busy upload is BLOB_UPLOAD_INVALID with 409). */
    status?: number,
  ) {
    super(message ?? ErrorCodes[code].message);
    this.name = "RegistryError";
    this.code = code;
    this.status = status ?? ErrorCodes[code].status;
    this.detail = detail;
    this.headers = headers;
  }

  toJSON(): { errors: { code: string; message: string; detail?: unknown }[] } {
    const entry: { code: string; message: string; detail?: unknown } = { code: this.code, message: this.message };
    if (this.detail !== undefined) entry.detail = this.detail;
    return { errors: [entry] };
  }
}

/** A failure the client can simply retry (storage or an upload object failed or was slow): 503 with Retry-After. */
export function unavailable(message: string, detail?: unknown): RegistryError {
  return new RegistryError("UNAVAILABLE", message, detail, { "Retry-After": "1" });
}

/** The serialisable form a Durable Object returns instead of throwing across RPC. */
export interface ErrorRecord {
  code: ErrorCode;
  status: number;
  message: string;
  detail?: unknown;
  headers?: Record<string, string>;
}

export function toErrorRecord(error: RegistryError): ErrorRecord {
  return {
    code: error.code,
    status: error.status,
    message: error.message,
    detail: error.detail,
    headers: error.headers,
  };
}

export function fromErrorRecord(record: ErrorRecord): RegistryError {
  return new RegistryError(record.code, record.message, record.detail, record.headers ?? {}, record.status);
}
