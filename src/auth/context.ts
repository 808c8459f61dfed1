import type { Action, Resource } from "../oci/access";

/**
 * What authentication leaves on a request's context for the routes (authorize.ts sets
 * it): what its credentials allow, and whom they name.
 */

/** What the request's credentials allow, for routes that check more than the middleware did (mount's `from`). */
export type AccessCheck = (resource: Resource, action: Action) => boolean;

/** Who the request's credentials name: whom the changes it makes are attributed to. */
export interface RequestActor {
  kind: "user" | "robot" | "anonymous" | "oidc";
  /** The user name, a robot's name, an OIDC login's `<issuer>#<subject>`; "" for anonymous. */
  name: string;
}

export type AuthEnv = { Bindings: Env; Variables: { can: AccessCheck; actor?: RequestActor } };
