import { RegistryError } from "./errors";

/** The digest algorithms this registry stores content under, with their hex lengths. */
export const DigestAlgorithms = { sha256: 64, sha512: 128 } as const;
export type DigestAlgorithm = keyof typeof DigestAlgorithms;

/** A validated content digest: `algorithm:hex`, lowercase. */
export interface Digest {
  readonly algorithm: DigestAlgorithm;
  readonly hex: string;
  /** The canonical string form, `sha256:…`. */
  readonly value: string;
}

// The spec's general grammar; anything matching it but not a registered algorithm
// with the right encoding is "unsupported" rather than "malformed".
const DIGEST_GRAMMAR = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

function isSupportedAlgorithm(algorithm: string): algorithm is DigestAlgorithm {
  return Object.hasOwn(DigestAlgorithms, algorithm);
}

/** The digest nearly every request names: checked by one expression before the general grammar. */
const SHA256_DIGEST = /^sha256:[a-f0-9]{64}$/;

/** Parses a digest, or throws DIGEST_INVALID naming what is wrong with it. */
export function parseDigest(text: string): Digest {
  if (SHA256_DIGEST.test(text)) return { algorithm: "sha256", hex: text.slice(7), value: text };
  if (!DIGEST_GRAMMAR.test(text)) {
    throw new RegistryError("DIGEST_INVALID", "invalid digest", {
      digest: text,
      reason: "not of the form algorithm:encoded",
    });
  }
  const colon = text.indexOf(":");
  const algorithm = text.slice(0, colon);
  const hex = text.slice(colon + 1);
  if (!isSupportedAlgorithm(algorithm)) {
    throw new RegistryError("DIGEST_INVALID", "unsupported digest algorithm", {
      digest: text,
      supported: Object.keys(DigestAlgorithms),
    });
  }
  const length = DigestAlgorithms[algorithm];
  if (hex.length !== length || !/^[a-f0-9]+$/.test(hex)) {
    throw new RegistryError("DIGEST_INVALID", `invalid ${algorithm} digest`, {
      digest: text,
      reason: `expected ${length} lowercase hex characters`,
    });
  }
  return { algorithm, hex, value: text };
}

/** True when `text` is shaped like a digest (used to tell a tag from a digest reference). */
export function looksLikeDigest(text: string): boolean {
  return text.includes(":");
}

const HEX_BYTES = Array.from({ length: 256 }, (_, byte) => byte.toString(16).padStart(2, "0"));

export function toHex(bytes: ArrayBuffer | Uint8Array): string {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let out = "";
  for (let index = 0; index < view.length; index++) out += HEX_BYTES[view[index] ?? 0];
  return out;
}

const WEBCRYPTO_NAMES: Record<DigestAlgorithm, string> = { sha256: "SHA-256", sha512: "SHA-512" };

/** WebCrypto's name for the algorithm (for crypto.subtle and crypto.DigestStream). */
export function webCryptoName(algorithm: DigestAlgorithm): string {
  return WEBCRYPTO_NAMES[algorithm];
}

/** Digest of bytes already in memory (manifests: at most a few MiB, size-checked first). */
export async function digestOf(bytes: Uint8Array, algorithm: DigestAlgorithm = "sha256"): Promise<Digest> {
  const hash = await crypto.subtle.digest(webCryptoName(algorithm), bytes);
  const hex = toHex(hash);
  return { algorithm, hex, value: `${algorithm}:${hex}` };
}

/** The digest `text` (`alg:hex`) names, or null when it names none. */
export function digestOrNull(text: string): Digest | null {
  try {
    return parseDigest(text);
  } catch {
    return null;
  }
}
