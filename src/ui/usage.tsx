/** @jsxImportSource hono/jsx */
import type { FC } from "hono/jsx";
import { quotaUsage, repositoryQuotas, type QuotaUsage } from "../quotas/usage-reports";
import { formatBytes, Layout, repositoryPath, type Chrome } from "./pages";
import { isAdministrator } from "./deliveries";
import { may, type Viewer } from "./session";

/**
 * Storage quotas on the pages (docs/operations.md, "Storage quotas"): `/usage`, each
 * namespace's usage against its limit and its largest repositories, and a line on a
 * repository's page. A viewer sees the repositories they may pull (an administrator,
 * all), and a namespace's total only where they see one of its repositories.
 */

/** Repositories shown per namespace. */
const SHOWN = 100;

/** The namespaces the viewer may see, each with the repositories they may pull. */
export async function usageFor(env: Env, viewer: Viewer): Promise<QuotaUsage[]> {
  const everything = isAdministrator(viewer);
  const namespaces = await quotaUsage(env, { repositories: SHOWN });
  return namespaces.flatMap((namespace) => {
    const repositories = namespace.repositories.filter((row) => everything || may(viewer, row.name, "pull"));
    return everything || repositories.length > 0 ? [{ ...namespace, repositories }] : [];
  });
}

/** The quotas a repository counts in (none: the line is not shown); null when they cannot be read now. */
export async function quotasOfRepository(env: Env, name: string): Promise<QuotaUsage[] | null> {
  return repositoryQuotas(env, name).catch(() => null);
}

function share(usage: QuotaUsage): string {
  const percent = usage.limit === 0 ? 100 : Math.round((usage.bytes / usage.limit) * 100);
  return `${formatBytes(usage.bytes)} of ${formatBytes(usage.limit)} (${percent}%)`;
}

const Counting: FC<{ usage: QuotaUsage }> = ({ usage }) =>
  usage.counted ? null : <span class="muted"> (still being counted)</span>;

export const UsagePage: FC<{ chrome: Chrome; namespaces: QuotaUsage[] }> = ({ chrome, namespaces }) => (
  <Layout chrome={chrome}>
    <h1>Storage quotas</h1>
    <p class="muted">
      A namespace counts each blob its repositories link once, however many of them link it; a repository's figure
      counts what it links, shared blobs included.
    </p>
    {namespaces.length === 0 ? <p class="muted">No quotas you can see.</p> : null}
    {namespaces.map((usage) => (
      <section class="quota" data-namespace={usage.namespace}>
        <h2>{usage.namespace}</h2>
        <p class="share">
          {share(usage)}
          <Counting usage={usage} />
        </p>
        <table class="usage">
          <thead>
            <tr>
              <th>Repository</th>
              <th class="num">Size</th>
            </tr>
          </thead>
          <tbody>
            {usage.repositories.map((row) => (
              <tr>
                <td>
                  <a href={repositoryPath(row.name)}>{row.name}</a>
                </td>
                <td class="num">{formatBytes(row.bytes)}</td>
              </tr>
            ))}
          </tbody>
        </table>
        {usage.repositoryCount > usage.repositories.length ? (
          <p class="muted">The largest {usage.repositories.length} you may see are listed.</p>
        ) : null}
      </section>
    ))}
  </Layout>
);

/** A repository page's line: the namespaces it counts in, their usage, and what it holds itself. */
export const RepositoryQuotas: FC<{ name: string; quotas: QuotaUsage[] | null }> = ({ name, quotas }) => {
  if (quotas === null) return <p class="muted quota">The storage quota cannot be read just now.</p>;
  if (quotas.length === 0) return null;
  const own = quotas[0]?.repositories.find((row) => row.name === name)?.bytes ?? 0;
  return (
    <p class="quota">
      {quotas.map((usage) => (
        <>
          Namespace <a href="/usage">{usage.namespace}</a>: {share(usage)}
          <Counting usage={usage} />.{" "}
        </>
      ))}
      This repository holds {formatBytes(own)}.
    </p>
  );
};
