// Child-process and temp-dir bookkeeping shared by the e2e harness and the benchmarks:
// every child is started detached (its own process group) and registered here, and
// whatever happens (success, failure, timeout, exit, a signal), no child group and no
// temp dir outlives the Node process that made them.
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync, rmSync } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";

const SIGNAL_NUMBERS = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };

/**
 * Whether a process of group `pgid` is still running, read from /proc (Linux): a zombie
 * does not count. A child whose parent exited first (workerd, when its Node process ends)
 * is handed to init, and this machine's init reaps orphans only every second or two; until
 * then the group still answers signals, and waiting for that cost ~2 s per stopped server.
 * Where /proc cannot be read, any member counts.
 */
function hasRunningMember(pgid) {
  let entries;
  try {
    entries = readdirSync("/proc");
  } catch {
    return true;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    let stat;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, "utf8");
    } catch {
      continue; // gone meanwhile
    }
    // pid (comm) state ppid pgrp …: comm may hold spaces and parentheses, so split after the last ")".
    const [state, , group] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (Number(group) === pgid && state !== "Z") return true;
  }
  return false;
}

/**
 * One keeper per process. `tempPrefix` names its temp dirs (lowercase: podman derives
 * image names from oci: layout paths); `keepTmpVariable` is the environment variable
 * that, set to 1, keeps them for inspection.
 */
export function processKeeper({ tempPrefix, keepTmpVariable }) {
  const keepTmp = process.env[keepTmpVariable] === "1";
  /** pgid -> description of every detached child group still running. */
  const liveGroups = new Map();
  const tempDirs = new Set();

  function kill(pgid, signal) {
    try {
      process.kill(-pgid, signal);
      return true;
    } catch {
      return false; // ESRCH: the group is gone
    }
  }
  // A group whose members have all exited, even if not yet reaped, is gone.
  const alive = (pgid) => kill(pgid, 0) && hasRunningMember(pgid);

  function cleanupSync() {
    for (const pgid of liveGroups.keys()) kill(pgid, "SIGKILL");
    liveGroups.clear();
    if (keepTmp) return;
    for (const dir of tempDirs) {
      try {
        rmSync(dir, { recursive: true, force: true });
      } catch {
        // best effort at exit
      }
    }
    tempDirs.clear();
  }
  process.on("exit", cleanupSync);
  for (const [signal, number] of Object.entries(SIGNAL_NUMBERS)) {
    process.once(signal, () => {
      console.error(`\n# ${signal}: killing child process groups`);
      cleanupSync();
      process.exit(128 + number);
    });
  }

  return {
    keepTmp,
    kill,
    track: (pgid, description) => liveGroups.set(pgid, description),
    forget: (pgid) => liveGroups.delete(pgid),

    /** SIGTERM the group, SIGKILL after `graceMs`, and wait (bounded) until it is gone. */
    async stopGroup(pgid, graceMs = 5000) {
      if (alive(pgid)) {
        kill(pgid, "SIGTERM");
        const deadline = Date.now() + graceMs;
        while (Date.now() < deadline && alive(pgid)) await delay(100);
        if (alive(pgid)) {
          kill(pgid, "SIGKILL");
          const killDeadline = Date.now() + 5000;
          while (Date.now() < killDeadline && alive(pgid)) await delay(100);
        }
      }
      liveGroups.delete(pgid);
    },

    /** A fresh temp dir, removed at exit unless the keep variable is set. */
    async makeTempDir(prefix) {
      const dir = join(tmpdir(), `${tempPrefix}-${prefix}-${randomBytes(6).toString("hex")}`);
      await mkdir(dir, { mode: 0o700 });
      tempDirs.add(dir);
      return dir;
    },

    async removeTempDir(dir) {
      tempDirs.delete(dir);
      if (keepTmp) {
        console.error(`# ${keepTmpVariable}: kept ${dir}`);
        return;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}
