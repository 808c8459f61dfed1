// Sizes as people write them on command lines: `100MB` (10^6), `32MiB` (2^20), `1.5GB`,
// `512k`, or a plain number of bytes. Units are case-insensitive; `K`, `M`, `G`, `T`
// alone are decimal (as Cloudflare states its plan limits: 100 MB).
const UNITS = {
  "": 1,
  b: 1,
  k: 1e3,
  kb: 1e3,
  m: 1e6,
  mb: 1e6,
  g: 1e9,
  gb: 1e9,
  t: 1e12,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};

/** Bytes of a size like `95MB`; throws a message naming the text when it is not one. */
export function parseSize(text) {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(String(text));
  const unit = match ? UNITS[match[2].toLowerCase()] : undefined;
  if (!match || unit === undefined) {
    throw new Error(`not a size: "${text}" (examples: 100MB, 32MiB, 1048576)`);
  }
  const bytes = Math.floor(Number(match[1]) * unit);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new Error(`not a size: "${text}"`);
  return bytes;
}

/** `95000000` → `95.0 MB` (decimal, as transfer rates are shown). */
export function formatBytes(bytes) {
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(2)} GB`;
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  if (bytes >= 1e3) return `${(bytes / 1e3).toFixed(1)} kB`;
  return `${bytes} B`;
}
