#!/usr/bin/env node
// The tools the end-to-end suite drives, in one list, for the two places that need it:
//   node scripts/test-tools.mjs --check     says in one message what is missing and how to
//                                           install it (exit 1), or nothing (exit 0);
//                                           `npm test` runs it first, so a suite never fails
//                                           midway for want of a client.
//   node scripts/test-tools.mjs --install   installs, from Debian's packages, whatever is
//                                           missing (apt-get, as root or through sudo);
//                                           `npm run test:all` and CI's `.ci/run` run it.
import { spawnSync } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";

/** What the e2e suite needs: a command (or a check) and the Debian package that brings it. */
const TOOLS = [
  { need: "skopeo", package: "skopeo" },
  { need: "podman", package: "podman" },
  { need: "buildah", package: "buildah" },
  { need: "umoci", package: "umoci" },
  // docker/distribution, the side-by-side reference and the mirror tests' upstream.
  { need: "docker-registry", package: "docker-registry" },
  // The Docker engine and its CLI (test/e2e/docker.test.mjs).
  { need: "dockerd", package: "docker.io" },
  { need: "docker", package: "docker.io" },
  { need: "newuidmap", package: "uidmap" },
  { need: "jq", package: "jq" },
  { need: "unshare", package: "util-linux" },
  { need: "containerd", package: "containerd" },
  { need: "ctr", package: "containerd" },
  // Go's HTTP client, as containerd and crane use it (test/e2e/go-client).
  { need: "go", package: "golang-go" },
  // The browser test/e2e/ui.test.mjs drives through playwright-core (never a downloaded one).
  { need: "chromium", package: "chromium" },
  // botocore checks the presigned URLs of blob redirects (test/e2e/redirect.test.mjs).
  {
    need: "python3 botocore",
    package: "python3-botocore",
    present: () => spawnSync("/usr/bin/python3", ["-c", "import botocore"], { stdio: "ignore" }).status === 0,
  },
];

function onPath(command) {
  for (const directory of (process.env.PATH ?? "").split(delimiter)) {
    if (!directory) continue;
    try {
      accessSync(join(directory, command), constants.X_OK);
      return true;
    } catch {
      // not in this directory
    }
  }
  return false;
}

export function missingTools() {
  return TOOLS.filter((tool) => !(tool.present ? tool.present() : onPath(tool.need)));
}

const installCommand = "npm run test:tools";

function check() {
  const missing = missingTools();
  if (missing.length === 0) return 0;
  const packages = [...new Set(missing.map((tool) => tool.package))];
  console.error(
    `The end-to-end tests need ${missing.map((tool) => tool.need).join(", ")}, missing on this machine.\n` +
      `Install them with:  ${installCommand}\n` +
      `(that is: apt-get update && apt-get install -y ${packages.join(" ")}), ` +
      `or run everything with:  npm run test:all`,
  );
  return 1;
}

function install() {
  const missing = missingTools();
  if (missing.length === 0) return 0;
  const packages = [...new Set(missing.map((tool) => tool.package))];
  console.error(`test-tools: missing ${missing.map((tool) => tool.need).join(", ")}; installing ${packages.join(" ")}`);
  const asRoot = process.getuid?.() === 0 ? [] : ["sudo"];
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  for (const args of [
    ["apt-get", "update"],
    ["apt-get", "install", "-y", ...packages],
  ]) {
    const command = [...asRoot, ...args];
    const result = spawnSync(command[0], command.slice(1), { stdio: "inherit", env });
    if (result.status !== 0) {
      console.error(`test-tools: ${command.join(" ")} failed (${result.status ?? result.signal})`);
      return 1;
    }
  }
  const still = missingTools();
  if (still.length > 0) {
    console.error(`test-tools: still missing after the install: ${still.map((tool) => tool.need).join(", ")}`);
    return 1;
  }
  return 0;
}

const mode = process.argv[2];
if (mode === "--check") process.exitCode = check();
else if (mode === "--install") process.exitCode = install();
else {
  console.error("usage: node scripts/test-tools.mjs --check | --install");
  process.exitCode = 2;
}
