import sha256Module from "../../build/sha256.wasm";
import sha512Module from "../../build/sha512.wasm";
import { toHex, type DigestAlgorithm } from "../oci/digest";

/**
 * A SHA-2 hash whose state can be saved after one chunk of an upload and restored
 * before the next, so each byte of a chunked upload is hashed exactly once, while it
 * streams, even when the requests land on a restarted Durable Object.
 *
 * `crypto.DigestStream` is faster but its state cannot be exported; the `hash-wasm`
 * package can export state but compiles WebAssembly at run time, which workerd
 * forbids. So we run hash-wasm's own precompiled binary (extracted at build time by
 * scripts/build-wasm.mjs) as a module imported by the Worker, through its C ABI.
 */
interface HashExports {
  memory: WebAssembly.Memory;
  Hash_GetBuffer(): number;
  Hash_Init(bits: number): void;
  Hash_Update(length: number): void;
  Hash_Final(): void;
  Hash_GetState(): number;
  STATE_SIZE: WebAssembly.Global;
}

/** hash-wasm copies input through one 16 KiB buffer in linear memory. */
const IO_BUFFER_BYTES = 16 * 1024;

const MODULES: Record<DigestAlgorithm, { module: WebAssembly.Module; bits: number; digestBytes: number }> = {
  sha256: { module: sha256Module, bits: 256, digestBytes: 32 },
  sha512: { module: sha512Module, bits: 512, digestBytes: 64 },
};

export class ResumableHash {
  private readonly exports: HashExports;
  private readonly spec: (typeof MODULES)[DigestAlgorithm];
  private readonly ioBuffer: number;

  private constructor(readonly algorithm: DigestAlgorithm) {
    this.spec = MODULES[algorithm];
    const instance = new WebAssembly.Instance(this.spec.module, {});
    this.exports = instance.exports as unknown as HashExports;
    this.ioBuffer = this.exports.Hash_GetBuffer();
    this.exports.Hash_Init(this.spec.bits);
  }

  static create(algorithm: DigestAlgorithm): ResumableHash {
    return new ResumableHash(algorithm);
  }

  /** Restores a hash from `save()`'s bytes. */
  static restore(algorithm: DigestAlgorithm, state: Uint8Array): ResumableHash {
    const hash = new ResumableHash(algorithm);
    const size = hash.stateSize();
    if (state.byteLength !== size) throw new Error(`hash state of ${state.byteLength} bytes, expected ${size}`);
    new Uint8Array(hash.exports.memory.buffer, hash.exports.Hash_GetState(), size).set(state);
    return hash;
  }

  private stateSize(): number {
    const address = this.exports.STATE_SIZE.value as number;
    return new DataView(this.exports.memory.buffer).getUint32(address, true);
  }

  update(bytes: Uint8Array): void {
    // Memory can grow, which detaches old views: take a fresh view per call.
    const memory = new Uint8Array(this.exports.memory.buffer);
    for (let offset = 0; offset < bytes.byteLength; offset += IO_BUFFER_BYTES) {
      const slice = bytes.subarray(offset, offset + IO_BUFFER_BYTES);
      memory.set(slice, this.ioBuffer);
      this.exports.Hash_Update(slice.byteLength);
    }
  }

  /** The hash state (about 100 bytes for SHA-256), to persist between chunks. */
  save(): Uint8Array {
    const size = this.stateSize();
    return new Uint8Array(this.exports.memory.buffer, this.exports.Hash_GetState(), size).slice();
  }

  /** Finishes the hash and returns its lowercase hex. The hash cannot be updated afterwards. */
  digestHex(): string {
    this.exports.Hash_Final();
    return toHex(new Uint8Array(this.exports.memory.buffer, this.ioBuffer, this.spec.digestBytes));
  }
}
