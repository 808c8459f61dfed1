import { settingsOf, type Settings } from "./settings/settings";

export { MAX_PARTS, MIN_PART_BYTES } from "./settings/settings";

/** The registry's settings (src/settings/settings.ts); the name callers knew them by. */
export type RegistryConfig = Settings;

export function readConfig(env: Env): RegistryConfig {
  return settingsOf(env);
}
