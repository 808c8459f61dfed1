import { RegistryError } from "./errors";

// The distribution spec's grammar for repository names and tags.
const NAME_COMPONENT = "[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*";
const NAME_GRAMMAR = new RegExp(`^${NAME_COMPONENT}(?:/${NAME_COMPONENT})*$`);
const TAG_GRAMMAR = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;

/**
 * Longest repository name accepted. The spec lets registries cap it; docker/distribution
 * caps the whole reference at 255 characters, and clients assume the same.
 */
export const MAX_NAME_LENGTH = 255;

/** Validates a repository name (`team/app/api`), throwing NAME_INVALID. */
export function validateName(name: string): string {
  if (name.length === 0 || name.length > MAX_NAME_LENGTH || !NAME_GRAMMAR.test(name)) {
    throw new RegistryError("NAME_INVALID", "invalid repository name", { name });
  }
  return name;
}

export function isValidTag(tag: string): boolean {
  return TAG_GRAMMAR.test(tag);
}

/** Validates a tag, throwing TAG_INVALID. */
export function validateTag(tag: string): string {
  if (!isValidTag(tag)) throw new RegistryError("TAG_INVALID", "invalid tag", { tag });
  return tag;
}
