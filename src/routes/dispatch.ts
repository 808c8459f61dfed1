import { Context, type ErrorHandler, type Hono, type MiddlewareHandler, type NotFoundHandler } from "hono";
import type { AppEnv } from "./http";

/**
 * What a Hono app's router holds per route: the handler first (hono's `RouterRoute` after
 * it, unused here), and per match the route's parameters (the Router interface's result).
 */
type Matched = [[MiddlewareHandler<AppEnv>, unknown], unknown][];

/**
 * Serves a request with the app's routes, middleware and handlers, as Hono's own `fetch`
 * does (hono-base.ts `#dispatch` and compose.ts, 4.13), with one difference: a HEAD runs
 * its GET route, as Hono's does, but the answer is sent as the route made it, not copied
 * into a second Response with a copy of its headers (the routes give a HEAD no body;
 * an answer that has one anyway is copied without it). A HEAD of a manifest or a blob is
 * among the requests a pull makes most, and each one paid for that copy
 * (docs/performance.md, "Request CPU against serverless-registry").
 *
 * Hono's semantics are kept: a route's parameters are those of the handler running
 * (`routeIndex`); an error thrown by a handler becomes the error handler's answer at the
 * level it was thrown, so the middleware around it still sees an answer; a chain that
 * ends without one gets the not-found handler's.
 */
export function dispatcher(
  app: Hono<AppEnv>,
  errorHandler: ErrorHandler<AppEnv>,
  notFound: NotFoundHandler<AppEnv>,
): (...args: Parameters<Hono<AppEnv>["fetch"]>) => Promise<Response> {
  const handleError = (error: unknown, c: Context<AppEnv>): Response | Promise<Response> => {
    if (error instanceof Error) return errorHandler(error, c);
    throw error;
  };
  const compose = (handlers: Matched, c: Context<AppEnv>): Promise<Context<AppEnv>> => {
    let index = -1;
    const step = async (i: number): Promise<Context<AppEnv>> => {
      if (i <= index) throw new Error("next() called multiple times");
      index = i;
      const entry = handlers[i];
      let response: Response | undefined;
      let failed = false;
      if (entry) {
        c.req.routeIndex = i;
        try {
          response = (await entry[0][0](c, () => step(i + 1) as unknown as Promise<void>)) ?? undefined;
        } catch (error) {
          if (!(error instanceof Error)) throw error;
          c.error = error;
          response = await errorHandler(error, c);
          failed = true;
        }
      } else if (!c.finalized) {
        response = await notFound(c);
      }
      if (response && (!c.finalized || failed)) c.res = response;
      return c;
    };
    return step(0);
  };
  const dispatch = async (...[request, env, executionCtx]: Parameters<Hono<AppEnv>["fetch"]>) => {
    const method = request.method === "HEAD" ? "GET" : request.method;
    const bindings = env as Env;
    const path = app.getPath(request, { env: bindings });
    const matchResult = app.router.match(method, path);
    const c = new Context<AppEnv>(request, {
      path,
      matchResult,
      env: bindings,
      executionCtx,
      notFoundHandler: notFound,
    });
    try {
      const context = await compose(matchResult[0] as unknown as Matched, c);
      if (!context.finalized) throw new Error("the request's route gave no answer");
      return context.res;
    } catch (error) {
      return handleError(error, c);
    }
  };
  return async (request, env, executionCtx) => {
    const response = await dispatch(request, env, executionCtx);
    if (request.method !== "HEAD" || response.body === null) return response;
    void response.body.cancel().catch(() => undefined);
    return new Response(null, response);
  };
}
