// Extracts the precompiled SHA-256 and SHA-512 WebAssembly binaries that the
// `hash-wasm` package ships (base64 inside its UMD bundles) into build/<name>.wasm.
//
// Why: workerd forbids compiling WebAssembly at run time, which is what hash-wasm's
// own loader does, but it runs a precompiled .wasm module imported by the Worker.
// We keep hash-wasm's audited binary and its C ABI (Hash_Init/Update/Final/GetState)
// and drive it from src/uploads/resumable-hash.ts, so the hash state can be exported
// between chunks of a resumable upload.
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const buildDir = join(dirname(fileURLToPath(import.meta.url)), "..", "build");
mkdirSync(buildDir, { recursive: true });

for (const name of ["sha256", "sha512"]) {
  const bundle = readFileSync(require.resolve(`hash-wasm/dist/${name}.umd.min.js`), "utf8");
  const match = new RegExp(`name:"${name}",data:"([A-Za-z0-9+/=]+)"`).exec(bundle);
  if (!match) {
    console.error(`build-wasm: no ${name} binary found in hash-wasm's bundle`);
    process.exit(1);
  }
  const binary = Buffer.from(match[1], "base64");
  if (binary.subarray(0, 4).toString("latin1") !== "\0asm") {
    console.error(`build-wasm: the ${name} data is not a WebAssembly module`);
    process.exit(1);
  }
  writeFileSync(join(buildDir, `${name}.wasm`), binary);
}
