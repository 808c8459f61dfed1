// Container clients (skopeo, podman, ...) sandboxed for one run, shared by the e2e harness
// and the benchmarks: an environment of temp dirs (HOME, TMPDIR, config files) and, as
// root, a private mount namespace. As root, containers/image keeps its blob-info cache in
// /var/lib/containers/cache and state under /run/containers, shared across runs; with temp
// dirs bound over /var/lib and /run in a namespace of its own, a client sees only its own.
import { spawnSync } from "node:child_process";
import { join } from "node:path";

/** `sh -c` script: binds $1 over /var/lib and $2 over /run, then runs the rest. */
export const ISOLATE_SCRIPT = 'mount --bind "$1" /var/lib && mount --bind "$2" /run && shift 2 && exec "$@"';

/**
 * The unshare argument list that runs `command args…` in a private mount namespace with
 * `varLib` over /var/lib and `runDir` over /run: `run("unshare", isolatedArgs(…))`.
 */
export function isolatedArgs(varLib, runDir, command, args) {
  return ["-m", "--propagation", "private", "--", "sh", "-c", ISOLATE_SCRIPT, "sh", varLib, runDir, command, ...args];
}

/**
 * Whether clients can run in a private mount namespace here (root with CAP_SYS_ADMIN):
 * tries `true` in one (bounded to 10 s).
 */
export function probeIsolation(varLib, runDir) {
  const probe = spawnSync("unshare", isolatedArgs(varLib, runDir, "true", []), { stdio: "ignore", timeout: 10_000 });
  return probe.status === 0;
}

/**
 * A client's environment, nothing inherited but PATH: HOME, TMPDIR and the XDG dirs under
 * `paths.home`, `paths.tmp` and `paths.run`; containers/image's registries.conf, policy
 * and auth file (`paths.registries`, `paths.policy`, `paths.auth`); no proxies (everything
 * goes to 127.0.0.1). `extra` adds or overrides variables.
 */
export function clientEnv(paths, extra = {}) {
  return {
    PATH: process.env.PATH ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    LANG: "C.UTF-8",
    HOME: paths.home,
    TMPDIR: paths.tmp,
    XDG_CONFIG_HOME: join(paths.home, ".config"),
    XDG_CACHE_HOME: join(paths.home, ".cache"),
    XDG_RUNTIME_DIR: join(paths.run, "user"),
    CONTAINERS_REGISTRIES_CONF: paths.registries,
    CONTAINERS_POLICY_JSON: paths.policy,
    REGISTRY_AUTH_FILE: paths.auth,
    NO_PROXY: "*",
    no_proxy: "*",
    ...extra,
  };
}
