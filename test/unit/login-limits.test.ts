import { createExecutionContext, env } from "cloudflare:test";
import bcrypt from "bcryptjs";
import { beforeAll, describe, expect, it } from "vitest";
import { app } from "../../src/app";
import { clientAddressOf, FRONT_SECRET_HEADER } from "../../src/auth/client-address";
import { clientAddress } from "../../src/auth/logins";
import worker from "../../src/index";

/**
 * Failed logins are limited per user name and per client address on every path that
 * checks a password (GET /token, POST /token, Basic on /v2): after LOGIN_MAX_FAILURES
 * failures the key is locked, 429 TOOMANYREQUESTS with Retry-After, for a time that
 * doubles with each further failure. Every test uses its own users and addresses: the
 * limiter objects live as long as the file's storage.
 */
const BASE = "http://registry.test";
const SERVICE = "registry.test";
const MAX_FAILURES = 5;
let authEnv: Env;

const MAX_FAILURES_PER_ADDRESS = 8;
const GUESSED = Array.from({ length: MAX_FAILURES_PER_ADDRESS }, (_, index) => `g${index + 1}`);
const USERS = ["victim", "spread", "bystander", "paths", "burst", "cleared", "slow", "alice", "bob", "carol", "eve"];
/** Users of the local-front tests: guessed at from forged addresses, and one who logs in. */
const FORGED = Array.from({ length: MAX_FAILURES_PER_ADDRESS }, (_, index) => `f${index + 1}`);
const FRONTED = ["frank", "grace"];

beforeAll(() => {
  authEnv = {
    ...env,
    AUTH_MODE: undefined,
    AUTH_USERS: [...USERS, ...GUESSED, ...FORGED, ...FRONTED]
      .map((user) => `${user}:${bcrypt.hashSync(`${user}-pw`, 4)}`)
      .join("\n"),
    TOKEN_SECRET: "a test key of the registry, long and random in production",
    LOGIN_MAX_FAILURES: String(MAX_FAILURES),
    LOGIN_MAX_FAILURES_PER_ADDRESS: String(MAX_FAILURES_PER_ADDRESS),
    LOGIN_LOCKOUT_SECONDS: "10",
    LOGIN_LOCKOUT_MAX_SECONDS: "900",
  } as Env;
});

type Path = "get" | "post" | "basic";

/** One login by `user` from `address` on one of the three paths; the response. */
async function login(user: string, password: string, address: string, path: Path = "get", bindings = authEnv) {
  const headers = { "CF-Connecting-IP": address };
  const basic = { ...headers, Authorization: `Basic ${btoa(`${user}:${password}`)}` };
  let request: Request;
  if (path === "post") {
    const form = new URLSearchParams({ grant_type: "password", username: user, password, service: SERVICE });
    request = new Request(`${BASE}/token`, { method: "POST", headers, body: form });
  } else if (path === "basic") {
    request = new Request(`${BASE}/v2/`, { headers: basic });
  } else {
    request = new Request(`${BASE}/token?service=${SERVICE}`, { headers: basic });
  }
  const response = await app.request(request, undefined, bindings);
  return { status: response.status, retryAfter: response.headers.get("Retry-After"), body: await response.text() };
}

const wrong = (user: string, address: string, path: Path = "get") => login(user, "not-the-password", address, path);
const right = (user: string, address: string, path: Path = "get") => login(user, `${user}-pw`, address, path);

describe("failed logins", () => {
  it("50 wrong passwords in a row: the first LOGIN_MAX_FAILURES get 401, every later one 429 with Retry-After", async () => {
    const statuses: number[] = [];
    for (let attempt = 0; attempt < 50; attempt++) {
      const answer = await wrong("victim", "198.51.100.1");
      statuses.push(answer.status);
      if (answer.status === 429) {
        expect(JSON.parse(answer.body)).toMatchObject({ errors: [{ code: "TOOMANYREQUESTS" }] });
        expect(Number(answer.retryAfter)).toBeGreaterThanOrEqual(1);
        expect(Number(answer.retryAfter)).toBeLessThanOrEqual(10);
      }
    }
    expect(statuses.slice(0, MAX_FAILURES)).toEqual(Array(MAX_FAILURES).fill(401));
    expect(statuses.slice(MAX_FAILURES)).toEqual(Array(50 - MAX_FAILURES).fill(429));
    // The right password does not get through a lock either: it would tell a guesser it was right.
    expect((await right("victim", "198.51.100.1")).status).toBe(429);
  });

  it("a user guessed at from many addresses is locked by its own limit; others at those addresses are not", async () => {
    for (let index = 0; index < MAX_FAILURES; index++) {
      expect((await wrong("spread", `198.51.100.${10 + index}`)).status).toBe(401);
    }
    const locked = await right("spread", "203.0.113.50");
    expect(locked.status).toBe(429);
    expect(Number(locked.retryAfter)).toBeGreaterThan(0);
    // Each guessing address has one failure: a user of its own logs in from there.
    expect((await right("bystander", "198.51.100.10")).status).toBe(200);
  });

  it("an address guessing at many users is locked; those users still log in from elsewhere", async () => {
    const guesser = "198.51.100.30";
    for (const user of GUESSED) expect((await wrong(user, guesser)).status).toBe(401);
    expect((await right("g1", guesser)).status).toBe(429);
    expect((await right("g1", "203.0.113.60")).status).toBe(200);
    expect((await right("g2", "203.0.113.61")).status).toBe(200);
    // Refused at the address, not counted for the user: eve's own limit is untouched.
    for (let attempt = 0; attempt < 10; attempt++) expect((await wrong("eve", guesser)).status).toBe(429);
    for (let attempt = 0; attempt < MAX_FAILURES - 1; attempt++) {
      expect((await wrong("eve", "203.0.113.62")).status).toBe(401);
    }
    expect((await right("eve", "203.0.113.62")).status).toBe(200);
  });

  it("a password remembered from the user's own login does not tell a guesser it is right while the user is locked", async () => {
    expect((await right("alice", "203.0.113.80")).status).toBe(200);
    for (let attempt = 0; attempt < MAX_FAILURES; attempt++) {
      expect((await wrong("alice", "198.51.100.100")).status).toBe(401);
    }
    expect((await right("alice", "198.51.100.100")).status).toBe(429);
    expect((await right("alice", "198.51.100.101", "basic")).status).toBe(429);
  });

  it("users sharing an address (a NAT) are not locked out by one of them mistyping", async () => {
    const office = "192.0.2.50";
    for (let attempt = 0; attempt < MAX_FAILURES; attempt++) expect((await wrong("bob", office)).status).toBe(401);
    expect((await right("bob", office)).status).toBe(429);
    expect((await right("carol", office)).status).toBe(200);
  });

  it("GET /token, POST /token and Basic on /v2 count together and are refused alike", async () => {
    const address = "198.51.100.40";
    const paths: Path[] = ["get", "post", "basic", "post", "basic"];
    for (const path of paths) expect((await wrong("paths", address, path)).status).toBe(401);
    for (const path of ["get", "post", "basic"] as const) {
      const answer = await right("paths", address, path);
      expect(answer.status).toBe(429);
      expect(answer.retryAfter).not.toBeNull();
    }
  });

  it("parallel guesses are judged one at a time: only LOGIN_MAX_FAILURES of 30 are checked", async () => {
    const answers = await Promise.all(Array.from({ length: 30 }, () => wrong("burst", "198.51.100.50")));
    const statuses = answers.map((answer) => answer.status);
    expect(statuses.filter((status) => status === 401)).toHaveLength(MAX_FAILURES);
    expect(statuses.filter((status) => status === 429)).toHaveLength(30 - MAX_FAILURES);
  });

  it("a successful login clears the user's own failures (not the address's)", async () => {
    for (let index = 0; index < MAX_FAILURES - 1; index++) await wrong("cleared", `198.51.100.${60 + index}`);
    expect((await right("cleared", "203.0.113.70")).status).toBe(200);
    for (let index = 0; index < MAX_FAILURES - 1; index++) await wrong("cleared", `198.51.100.${70 + index}`);
    expect((await wrong("cleared", "198.51.100.80")).status).toBe(401);
  });

  it("Retry-After grows with failures after a lock ends", async () => {
    const fast = { ...authEnv, LOGIN_MAX_FAILURES: "2", LOGIN_LOCKOUT_SECONDS: "1" } as Env;
    const address = "198.51.100.90";
    const attempt = () => login("slow", "not-the-password", address, "get", fast);
    expect((await attempt()).status).toBe(401);
    expect((await attempt()).status).toBe(401);
    const first = await attempt();
    expect(first.status).toBe(429);
    expect(first.retryAfter).toBe("1");
    await new Promise((resolve) => setTimeout(resolve, 1100));
    expect((await attempt()).status).toBe(401);
    const second = await attempt();
    expect(second.status).toBe(429);
    expect(second.retryAfter).toBe("2");
  });
});

describe("client addresses", () => {
  it("IPv4 as given; IPv6 by its /64; IPv4-mapped IPv6 as IPv4; none as unknown", () => {
    expect(clientAddress("203.0.113.7")).toBe("203.0.113.7");
    expect(clientAddress("2001:db8:1:2:3:4:5:6")).toBe("2001:db8:1:2::/64");
    expect(clientAddress("2001:DB8:1:2::99")).toBe("2001:db8:1:2::/64");
    expect(clientAddress("2001:db8::1")).toBe("2001:db8:0:0::/64");
    expect(clientAddress("::ffff:192.0.2.1")).toBe("192.0.2.1");
    expect(clientAddress(undefined)).toBe("unknown");
  });
});

describe("client addresses under npm start (LOCAL_FRONT_SECRET)", () => {
  const SECRET = "the front's secret, random per start";
  const local = () => ({ ...authEnv, LOCAL_FRONT_SECRET: SECRET }) as Env;

  /** A login through the Worker's own entry point (src/index.ts), headers as sent to workerd's port. */
  async function loginAt(user: string, password: string, headers: Record<string, string>, bindings: Env) {
    const request = new Request(`${BASE}/token?service=${SERVICE}`, {
      headers: { ...headers, Authorization: `Basic ${btoa(`${user}:${password}`)}` },
    });
    return (await worker.fetch(request, bindings, createExecutionContext())).status;
  }

  it("a CF-Connecting-IP sent without the front's secret picks no bucket: forged addresses count as one client", async () => {
    // Each guess from an address of its own, some with a wrong secret: all land in one bucket.
    for (const [index, user] of FORGED.entries()) {
      const headers: Record<string, string> = { "CF-Connecting-IP": `198.51.100.${200 + index}` };
      if (index % 2 === 1) headers[FRONT_SECRET_HEADER] = "a guess at the secret";
      expect(await loginAt(user, "not-the-password", headers, local())).toBe(401);
    }
    expect(await loginAt("frank", "frank-pw", { "CF-Connecting-IP": "198.51.100.250" }, local())).toBe(429);
    expect(await loginAt("frank", "frank-pw", {}, local())).toBe(429);
  });

  it("an address sent with the front's secret is believed; without LOCAL_FRONT_SECRET (Cloudflare) as sent", async () => {
    const fromFront = { "CF-Connecting-IP": "203.0.113.90", [FRONT_SECRET_HEADER]: SECRET };
    expect(await loginAt("frank", "frank-pw", fromFront, local())).toBe(200);
    expect(await loginAt("grace", "grace-pw", { "CF-Connecting-IP": "203.0.113.91" }, authEnv)).toBe(200);
  });

  it("the address is believed only beside the secret, and a request without it loses its address", () => {
    const vouched = new Request(BASE, {
      headers: { "CF-Connecting-IP": "203.0.113.92", [FRONT_SECRET_HEADER]: SECRET },
    });
    expect(clientAddressOf(vouched, local())).toBe("203.0.113.92");
    const forged = new Request(BASE, {
      headers: { "CF-Connecting-IP": "203.0.113.93", [FRONT_SECRET_HEADER]: "wrong" },
    });
    expect(clientAddressOf(forged, local())).toBeUndefined();
    const unsent = new Request(BASE, { headers: { "CF-Connecting-IP": "203.0.113.95" } });
    expect(clientAddressOf(unsent, local())).toBeUndefined();
    const onCloudflare = new Request(BASE, { headers: { "CF-Connecting-IP": "203.0.113.94" } });
    expect(clientAddressOf(onCloudflare, authEnv)).toBe("203.0.113.94");
  });
});
