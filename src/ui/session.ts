import type { Context } from "hono";
import { deleteCookie, getCookie, setCookie } from "hono/cookie";
import type { Action } from "../oci/access";
import { loadPolicy, tokenSettings, type AuthEnv, type RequestActor } from "../auth/authorize";
import type { AppEnv } from "../routes/http";
import { verifyLogin } from "../auth/logins";
import { isRobotLogin } from "../auth/robots";
import { allowedActions, type Policy } from "../auth/policy";
import { hmacHex, issueRefreshToken, refreshTokenClaims, signingKey, type RefreshClaims } from "../auth/tokens";
import { settingsOf } from "../settings/settings";
import { mirroredName } from "../settings/upstreams";
import { RegistryError } from "../oci/errors";
import { revokedSessionsOf } from "../registry/registry";

/**
 * Who is looking at the web pages (src/ui), and what they may do: the same users and
 * access rules as the API. A login sets a session cookie holding a signed token of the
 * user (HttpOnly, SameSite=Strict, Secure over HTTPS), bound to the user's password like a
 * refresh token (a changed password ends the session); logging out revokes the session
 * server-side (RevokedSessions), so a copy of the cookie is worthless after it. Forms that change anything carry
 * a CSRF token (an HMAC of the session, or of a random per-browser cookie before a login)
 * and must come from this origin.
 */

export const SESSION_COOKIE = "registry_session";
/** A random value per browser, which anonymous forms' CSRF tokens are bound to. */
const CSRF_COOKIE = "registry_csrf";
const SESSION_TTL_SECONDS = 12 * 60 * 60;

export interface Viewer {
  /** null: anonymous. */
  user: string | null;
  policy: Policy;
  /** Whether logging in is possible at all (users are configured). */
  canLogIn: boolean;
  csrf: string;
  /** The session's claims, when logged in (what a logout revokes). */
  session: RefreshClaims | null;
}

type UiContext = Context<AppEnv>;

/** The pages' context as the authentication code types it (AppEnv only adds variables). */
function authContext(c: UiContext): Context<AuthEnv> {
  return c as unknown as Context<AuthEnv>;
}

export async function viewerOf(c: UiContext): Promise<Viewer> {
  const policy = loadPolicy(c.env);
  const cookie = getCookie(c, SESSION_COOKIE);
  let session: RefreshClaims | null = null;
  if (cookie && policy.mode === "enforced") {
    session = await refreshTokenClaims(
      tokenSettings(authContext(c)),
      cookie,
      (name) => policy.users.get(name),
      "session",
    );
    if (session && (await revokedSessionsOf(c.env).isRevoked(session.jti, session.exp))) session = null;
  }
  const user = session?.user ?? null;
  // The CSRF token is bound to this browser: to its session when logged in (a session
  // cookie that did not verify counts as none), else to a random cookie of its own, set on
  // the first page it gets (so even the login form's token is this browser's alone).
  let binding: string;
  if (user !== null && cookie) {
    binding = `session\u0000${cookie}`;
  } else {
    let browser = getCookie(c, CSRF_COOKIE);
    if (!browser || !/^[0-9a-f]{32}$/.test(browser)) {
      browser = [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join("");
      setCookie(c, CSRF_COOKIE, browser, {
        httpOnly: true,
        secure: new URL(c.req.url).protocol === "https:",
        sameSite: "Strict",
        path: "/",
      });
    }
    binding = `browser\u0000${browser}`;
  }
  const csrf = await hmacHex(signingKey(c.env), `csrf\u0000${binding}`);
  return { user, policy, canLogIn: policy.mode === "enforced", csrf, session };
}

/** Whom the changes a viewer makes from the pages are attributed to. */
export function viewerActor(viewer: Viewer): RequestActor {
  return viewer.user === null ? { kind: "anonymous", name: "" } : { kind: "user", name: viewer.user };
}

/** Whether the viewer may take `action` on repository `name`, as the API would let them. */
export function may(viewer: Viewer, name: string, action: Action): boolean {
  return allowedActions(viewer.policy, viewer.user, { type: "repository", name }).has(action);
}

/** Whether the viewer may delete from `name` here: the rules, the setting, and not a mirrored name. */
export function mayDelete(c: UiContext, viewer: Viewer, name: string): boolean {
  if (!settingsOf(c.env).deleteEnabled) return false;
  if (mirroredName(settingsOf(c.env).mirrors, name)) return false;
  return may(viewer, name, "delete");
}

/** A form that changes something: the CSRF token must match and the request come from this origin. */
export function checkForm(c: UiContext, viewer: Viewer, form: URLSearchParams): void {
  const origin = c.req.header("Origin");
  const fetchSite = c.req.header("Sec-Fetch-Site");
  const sameOrigin =
    (origin === undefined || origin === new URL(c.req.url).origin) &&
    (fetchSite === undefined || fetchSite === "same-origin" || fetchSite === "none");
  const presented = new TextEncoder().encode(form.get("csrf") ?? "");
  const expected = new TextEncoder().encode(viewer.csrf);
  const matches = presented.byteLength === expected.byteLength && crypto.subtle.timingSafeEqual(presented, expected);
  if (!sameOrigin || !matches) {
    throw new RegistryError("DENIED", "this form did not come from this registry's pages; reload and try again");
  }
}

/** Checks a login; sets the session cookie and returns true, or returns false. */
export async function logIn(c: UiContext, user: string, password: string): Promise<boolean> {
  const policy = loadPolicy(c.env);
  // Robots (src/auth/robots.ts) are for the API, not the pages.
  if (isRobotLogin(policy, user, password)) return false;
  if (policy.mode !== "enforced" || !(await verifyLogin(authContext(c), policy, user, password, "web"))) return false;
  const token = await issueRefreshToken(tokenSettings(authContext(c)), user, policy.users.get(user) ?? "", {
    use: "session",
    ttlSeconds: SESSION_TTL_SECONDS,
  });
  setCookie(c, SESSION_COOKIE, token, {
    httpOnly: true,
    secure: new URL(c.req.url).protocol === "https:",
    sameSite: "Strict",
    path: "/",
    maxAge: SESSION_TTL_SECONDS,
  });
  return true;
}

/** Ends the viewer's session: revoked server-side (a kept copy of the cookie is refused), and the cookie removed. */
export async function logOut(c: UiContext, viewer: Viewer): Promise<void> {
  if (viewer.session) await revokedSessionsOf(c.env).revoke(viewer.session.jti, viewer.session.exp);
  deleteCookie(c, SESSION_COOKIE, { path: "/", secure: new URL(c.req.url).protocol === "https:" });
}
