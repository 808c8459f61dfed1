import { unavailable } from "../oci/errors";
import { forEachBounded } from "../registry/bounded";
import type { Finding, VerifyReport } from "../registry/registry";
import { metered, meterOnEnv } from "../registry/meter";
import { quotasOf } from "../settings/quotas";
import { settingsOf } from "../settings/settings";
import type { UsageReport } from "./namespace-usage";
import { formatSize } from "../settings/values";
import { usageOf } from "./quota-keeper";

/**
 * What the quotas hold, for the operator (`GET /_admin/usage`), the web pages, and the
 * integrity check (`npm run verify`), which compares each namespace's recorded usage with
 * what it counted from the links, and with `--repair` has a drifted namespace counted again.
 */

/** A namespace's usage with its limit. */
export interface QuotaUsage extends UsageReport {
  limit: number;
}

/** Namespaces asked at once. */
const PARALLEL = 6;

async function reportOf(env: Env, namespace: string, options: { limit: number; repository?: string }) {
  try {
    return await metered("do", "call", () => usageOf(env, namespace).report(namespace, options), meterOnEnv(env));
  } catch (error) {
    throw unavailable("the namespace's usage could not be read; retry", { namespace, cause: String(error) });
  }
}

/**
 * Every quota's usage (or `namespace`'s only), with its `repositories` largest
 * repositories. Empty without QUOTAS.
 */
export async function quotaUsage(
  env: Env,
  options: { repositories: number; namespace?: string },
): Promise<QuotaUsage[]> {
  const quotas = settingsOf(env).quotas.filter(
    (quota) => options.namespace === undefined || quota.namespace === options.namespace,
  );
  const reports = new Map<string, QuotaUsage>();
  await forEachBounded(quotas, PARALLEL, async (quota) => {
    const report = await reportOf(env, quota.namespace, { limit: options.repositories });
    reports.set(quota.namespace, { ...report, limit: quota.bytes });
  });
  return quotas.flatMap((quota) => reports.get(quota.namespace) ?? []);
}

/** The quotas a repository counts in, each with the namespace's usage and the repository's own (`repositories`: it alone). */
export async function repositoryQuotas(env: Env, name: string): Promise<QuotaUsage[]> {
  const quotas = quotasOf(settingsOf(env), name);
  return Promise.all(
    quotas.map(async (quota) => ({
      ...(await reportOf(env, quota.namespace, { limit: 1, repository: name })),
      limit: quota.bytes,
    })),
  );
}

/**
 * The integrity check's part for quotas: each namespace's recorded usage against the
 * bytes its links hold (as `report.usage` counted them). A difference is an error
 * (`usage-drift`); `repair` has the namespace counted again from its links. A push or a
 * delete running during the check can show as a passing difference: check again.
 */
export async function checkUsage(env: Env, report: VerifyReport, repair: boolean): Promise<void> {
  for (const counted of report.usage ?? []) {
    const namespace = counted.namespace;
    const recorded = await reportOf(env, namespace, { limit: 0 });
    if (recorded.counted && recorded.bytes === counted.bytes) continue;
    const finding: Finding = {
      severity: recorded.counted ? "error" : "info",
      kind: "usage-drift",
      key: `usage:${namespace}`,
      detail: recorded.counted
        ? `recorded ${recorded.bytes} bytes (${formatSize(recorded.bytes)}), its links hold ${counted.bytes} ` +
          `(${formatSize(counted.bytes)}) in ${counted.blobs} blobs`
        : `being counted (${recorded.bytes} bytes so far); its links hold ${counted.bytes}`,
    };
    if (repair && recorded.counted) {
      const recount = await metered("do", "call", () => usageOf(env, namespace).recount(namespace), meterOnEnv(env));
      finding.repaired = recount.counted
        ? `counted again: ${recount.bytes} bytes`
        : "being counted again (the namespace's object goes on by its alarm)";
    }
    report.findings.push(finding);
  }
  report.ok = report.findings.every((finding) => finding.severity !== "error" || finding.repaired !== undefined);
}
