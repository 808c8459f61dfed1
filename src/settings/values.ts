/**
 * Parsers of single setting values, each failing with a SettingsError that names the
 * setting: a setting the registry cannot follow is the operator's to fix, never guessed at.
 */

/** A setting the registry cannot follow; the message names it. */
export class SettingsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SettingsError";
  }
}

/** The text of a setting, or undefined when it is unset or blank. */
export function present(text: string | undefined): string | undefined {
  return text === undefined || text.trim() === "" ? undefined : text.trim();
}

/** A whole number in [min, max]; `fallback` when unset or blank. */
export function integer(
  name: string,
  text: string | undefined,
  fallback: number,
  { min = 0, max = Number.MAX_SAFE_INTEGER }: { min?: number; max?: number } = {},
): number {
  const value = present(text);
  if (value === undefined) return fallback;
  const number = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(number) || number < min || number > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `at least ${min}` : `from ${min} to ${max}`;
    throw new SettingsError(`${name}: "${value.slice(0, 40)}" is not a whole number ${range}`);
  }
  return number;
}

/** `true`/`false` (also `on`/`off`, `1`/`0`); `fallback` when unset or blank. */
export function flag(name: string, text: string | undefined, fallback: boolean): boolean {
  const value = present(text)?.toLowerCase();
  if (value === undefined) return fallback;
  if (["true", "on", "1", "yes"].includes(value)) return true;
  if (["false", "off", "0", "no"].includes(value)) return false;
  throw new SettingsError(`${name}: "${value.slice(0, 40)}" is not true or false`);
}

const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400, w: 604_800 };

/** Seconds in `5d`, `12h`, `90` (seconds), …; throws a SettingsError naming `where` otherwise. */
export function parseDuration(value: unknown, where: string): number {
  if (typeof value === "number" && Number.isFinite(value) && value >= 0) return value;
  const match = typeof value === "string" ? /^(\d+)([smhdw]?)$/.exec(value.trim()) : null;
  if (!match) throw new SettingsError(`${where}: "${String(value)}" is not a duration (e.g. 3600, 12h, 7d)`);
  return Number(match[1]) * (UNIT_SECONDS[match[2] || "s"] ?? 1);
}

/** Parses a JSON setting; a parse failure names the setting. */
export function json(name: string, text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new SettingsError(`${name} is not valid JSON`);
  }
}

/** Repository name patterns: `*` matches within one path component, `**` across components; everything else literally. */
export function namePattern(glob: string): RegExp {
  let source = "";
  for (let index = 0; index < glob.length; index++) {
    const char = glob.charAt(index);
    if (char === "*" && glob[index + 1] === "*") {
      source += ".*";
      index++;
    } else if (char === "*") {
      source += "[^/]*";
    } else {
      source += char.replace(/[.+?^${}()|[\]\\]/g, "\\$&");
    }
  }
  return new RegExp(`^${source}$`);
}

/** Tag patterns: `*` matches any run of characters. */
export function tagPattern(glob: string): RegExp {
  return new RegExp(`^${glob.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*")}$`);
}

/** Size units, as scripts/lib/sizes.mjs reads them: `k`, `kb` 1000; `kib` 1024; and so on up to `t`. */
const SIZE_UNITS: Record<string, number> = { "": 1, b: 1 };
for (const [index, letter] of ["k", "m", "g", "t"].entries()) {
  SIZE_UNITS[letter] = SIZE_UNITS[`${letter}b`] = 1000 ** (index + 1);
  SIZE_UNITS[`${letter}ib`] = 1024 ** (index + 1);
}

/**
 * Bytes in `104857600`, `100MiB`, `1.5GB`, `500M`, … (units as scripts/lib/sizes.mjs reads
 * them: `K`, `M`, `G`, `T` and `KB`… decimal, `KiB`… binary, case-insensitive); a whole
 * number of bytes may also be a JSON number. Throws a SettingsError naming `where` otherwise.
 */
export function parseSize(value: unknown, where: string): number {
  if (typeof value === "number" && Number.isSafeInteger(value) && value >= 0) return value;
  const match = typeof value === "string" ? /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(value.trim()) : null;
  const unit = match ? SIZE_UNITS[(match[2] ?? "").toLowerCase()] : undefined;
  const bytes = match && unit !== undefined ? Math.floor(Number(match[1]) * unit) : NaN;
  if (!Number.isSafeInteger(bytes) || bytes < 0) {
    throw new SettingsError(`${where}: "${String(value).slice(0, 40)}" is not a size (e.g. 104857600, 100MiB, 2GB)`);
  }
  return bytes;
}

/** Bytes as people read them, in powers of 1024: `512 B`, `1.50 KiB`, `100.0 MiB`. */
export function formatSize(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}
