// A cache of the Worker's bundle and of the Miniflare options wrangler reads from
// wrangler.toml, for starts of code that was bundled before (scripts/lib/local-worker.mjs,
// when WORKER_BUNDLE_CACHE names a directory). The e2e suite starts about twenty servers of
// one snapshot of the code; each bundling run (`wrangler deploy --dry-run`) and import of
// wrangler costs ~3 s of CPU, which is most of a start.
//
// An entry is DIR/<sha256 of the inputs>: the bundle's files and options.json. The inputs
// are what either depends on: src/, build/*.wasm, wrangler.toml, .dev.vars and .env (their
// settings are among the options), tsconfig.json and package-lock.json (the installed
// packages).
// Entries are written to a temp dir and renamed into place, so servers starting at once
// (the e2e files run two at a time) never see half an entry; one not used for a day is
// removed when another is written. The directory is its owner's only, as .dev.vars is.
import { createHash, randomBytes } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";

const INPUT_FILES = ["wrangler.toml", ".dev.vars", ".env", "tsconfig.json", "package-lock.json"];
const UNUSED_FOR_MS = 24 * 3600_000;

/** Every file under `dir`, sorted, as paths relative to the working directory. */
function filesUnder(dir) {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => join(entry.parentPath, entry.name))
    .sort();
}

/** sha256 of the inputs (names and bytes) in the working directory (the checkout, or its snapshot). */
function inputsHash() {
  const wasm = existsSync("build")
    ? readdirSync("build")
        .filter((name) => name.endsWith(".wasm"))
        .sort()
        .map((name) => join("build", name))
    : [];
  const hash = createHash("sha256");
  for (const file of [...filesUnder("src"), ...wasm, ...INPUT_FILES.filter((name) => existsSync(name))]) {
    hash.update(`${file}\0`);
    hash.update(readFileSync(file));
    hash.update("\0");
  }
  return hash.digest("hex");
}

/** Removes the entries of `cacheDir` not used for a day (best effort). */
function prune(cacheDir) {
  for (const name of readdirSync(cacheDir)) {
    const path = join(cacheDir, name);
    try {
      if (Date.now() - statSync(path).mtimeMs > UNUSED_FOR_MS) rmSync(path, { recursive: true, force: true });
    } catch {
      // removed meanwhile
    }
  }
}

/**
 * The bundle directory and worker options for the code in the working directory: from
 * `cacheDir` when there, else made by `build(dir)` (which writes the bundle into `dir` and
 * returns the options) and kept. Returns { bundleDir, workerOptions }.
 */
export async function cachedBundle(cacheDir, build) {
  mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
  const entry = join(cacheDir, inputsHash());
  const optionsFile = join(entry, "options.json");
  if (existsSync(optionsFile)) {
    const now = new Date();
    utimesSync(entry, now, now);
    return { bundleDir: entry, workerOptions: JSON.parse(readFileSync(optionsFile, "utf8")) };
  }
  const building = join(cacheDir, `.building-${randomBytes(6).toString("hex")}`);
  mkdirSync(building, { mode: 0o700 });
  try {
    const workerOptions = await build(building);
    // Written last: an entry with options.json is whole.
    writeFileSync(join(building, "options.json"), JSON.stringify(workerOptions), { mode: 0o600 });
    try {
      renameSync(building, entry);
    } catch (error) {
      // Another start wrote the same entry meanwhile: use that one.
      if (!existsSync(optionsFile)) throw error;
    }
    prune(cacheDir);
    return { bundleDir: entry, workerOptions };
  } finally {
    rmSync(building, { recursive: true, force: true });
  }
}
