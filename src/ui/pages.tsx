/** @jsxImportSource hono/jsx */
import type { Child, FC } from "hono/jsx";
import { raw } from "hono/html";
import type { RegistryEvent } from "../events/event";
import type { TagRow } from "../registry/registry";
import { formatSize } from "../settings/values";
import type { TagPulls } from "./data";

/**
 * The web pages (src/ui), rendered on the server with Hono's JSX: everything they show is
 * escaped by JSX (names, tags, labels and annotations are user input). The one script
 * copies a pull command to the clipboard; without it the command is there to select.
 */

export const STYLE = `
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24;background:#fafbfc}
header{display:flex;gap:1em;align-items:center;justify-content:space-between;padding:.6em 1em;background:#24292f;color:#fff}
header a{color:#fff;text-decoration:none;font-weight:600}
header form{display:inline;margin:0}
main{max-width:72em;margin:0 auto;padding:1em}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.35em .5em;border-bottom:1px solid #d8dee4;vertical-align:top}
code,pre{font:13px ui-monospace,monospace;word-break:break-all}
pre{white-space:pre-wrap;background:#f0f2f4;padding:.6em;max-height:30em;overflow:auto}
.muted{color:#57606a}.num{text-align:right;white-space:nowrap}
.pull{display:flex;gap:.4em;align-items:center}
button,input[type=submit]{cursor:pointer}
.danger{color:#b42318}
nav.pages{margin:1em 0;display:flex;gap:1em}
@media (max-width:40em){th.optional,td.optional{display:none}}
`;

export const COPY_SCRIPT = `
document.addEventListener("click", function (event) {
  var button = event.target.closest("button[data-copy]");
  if (!button) return;
  navigator.clipboard.writeText(button.getAttribute("data-copy")).then(function () {
    button.textContent = "Copied";
    setTimeout(function () { button.textContent = "Copy"; }, 1500);
  });
});
`;

export interface Chrome {
  title: string;
  user: string | null;
  canLogIn: boolean;
  csrf: string;
}

export const Layout: FC<{ chrome: Chrome; children?: Child }> = ({ chrome, children }) => (
  <>
    {raw("<!DOCTYPE html>")}
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <title>{chrome.title}</title>
        <style>{raw(STYLE)}</style>
      </head>
      <body>
        <header>
          <a href="/">edge-registry</a>
          <span>
            {chrome.user !== null ? (
              <form method="post" action="/logout">
                <span>{chrome.user} </span>
                <input type="hidden" name="csrf" value={chrome.csrf} />
                <input type="submit" value="Log out" />
              </form>
            ) : chrome.canLogIn ? (
              <a href="/login">Log in</a>
            ) : null}
          </span>
        </header>
        <main>{children}</main>
        <script>{raw(COPY_SCRIPT)}</script>
      </body>
    </html>
  </>
);

export function formatBytes(size: number | undefined): string {
  return size === undefined ? "—" : formatSize(size);
}

export function shortDigest(digest: string): string {
  const [algorithm, hex = ""] = digest.split(":");
  return `${algorithm}:${hex.slice(0, 12)}`;
}

export function repositoryPath(name: string): string {
  return `/repositories/${name}`;
}

export function imagePath(name: string, digest: string): string {
  return `/repositories/${name}/-/manifests/${digest}`;
}

export const PullCommand: FC<{ command: string }> = ({ command }) => (
  <span class="pull">
    <code>{command}</code>
    <button type="button" data-copy={command}>
      Copy
    </button>
  </span>
);

export const CatalogPage: FC<{
  chrome: Chrome;
  names: string[];
  filter: string;
  next?: string | undefined;
  exhausted: boolean;
}> = ({ chrome, names, filter, next, exhausted }) => (
  <Layout chrome={chrome}>
    <h1>Repositories</h1>
    <form method="get" action="/">
      <input type="search" name="q" value={filter} placeholder="Filter by name" aria-label="Filter by name" />{" "}
      <input type="submit" value="Filter" />
    </form>
    {names.length === 0 ? (
      <p class="muted">
        {chrome.user === null && chrome.canLogIn
          ? "No repositories you can see without logging in."
          : "No repositories."}
      </p>
    ) : (
      <ul class="repositories">
        {names.map((name) => (
          <li>
            <a href={repositoryPath(name)}>{name}</a>
          </li>
        ))}
      </ul>
    )}
    {exhausted ? <p class="muted">The search stopped after 10 000 names: narrow the filter.</p> : null}
    {next !== undefined ? (
      <nav class="pages">
        <a href={`/?${new URLSearchParams({ q: filter, last: next }).toString()}`}>Next page</a>
      </nav>
    ) : null}
  </Layout>
);

export const RepositoryPage: FC<{
  chrome: Chrome;
  name: string;
  host: string;
  rows: TagRow[];
  page: number;
  pages: number;
  total: number;
  canDelete: boolean;
  truncated: boolean;
  /** The repository's latest audit rows; null: the audit log could not be read. */
  activity: RegistryEvent[] | null;
  /** The storage quotas it counts in (src/ui/usage.tsx), when any. */
  quota?: Child;
  /** When the manifests shown were last pulled, and how often; undefined: pulls are not recorded. */
  pulls: TagPulls | undefined;
}> = ({ chrome, name, host, rows, page, pages, total, canDelete, truncated, activity, quota, pulls }) => (
  <Layout chrome={chrome}>
    <h1>{name}</h1>
    <p class="muted">
      {total} {total === 1 ? "tag" : "tags"}, newest first{truncated ? " (the first 10 000 by name)" : ""}
    </p>
    {quota}
    <table class="tags">
      <thead>
        <tr>
          <th>Tag</th>
          <th class="optional">Digest</th>
          <th class="num">Size</th>
          <th>Platforms</th>
          <th class="optional">Pushed</th>
          {pulls ? (
            <>
              <th class="optional" title="recorded at most once a PULL_RECORD_INTERVAL per location">
                Last pulled
              </th>
              <th class="num" title="approximate: counted in memory between records">
                Pulls
              </th>
            </>
          ) : null}
          <th>Pull</th>
          {canDelete ? <th></th> : null}
        </tr>
      </thead>
      <tbody>
        {rows.map((row) => (
          <tr data-tag={row.tag}>
            <td>{row.digest ? <a href={imagePath(name, row.digest)}>{row.tag}</a> : row.tag}</td>
            <td class="optional">
              <code title={row.digest}>{row.digest ? shortDigest(row.digest) : "—"}</code>
            </td>
            <td class="num size">{formatBytes(row.summary?.size)}</td>
            <td class="platforms">{row.summary?.platforms?.join(", ") ?? ""}</td>
            <td class="optional">
              <time datetime={row.pushedAt.toISOString()}>
                {row.pushedAt.toISOString().replace("T", " ").slice(0, 19)}
              </time>
            </td>
            {pulls ? <PullCells records={pulls.records} digest={row.digest} /> : null}
            <td>
              <PullCommand command={`docker pull ${host}/${name}:${row.tag}`} />
            </td>
            {canDelete ? (
              <td>
                <a
                  class="danger"
                  href={`${repositoryPath(name)}/-/delete?${new URLSearchParams({ tag: row.tag }).toString()}`}
                >
                  Delete
                </a>
              </td>
            ) : null}
          </tr>
        ))}
      </tbody>
    </table>
    {pages > 1 ? (
      <nav class="pages">
        {page > 1 ? <a href={`${repositoryPath(name)}?page=${page - 1}`}>Newer</a> : null}
        <span>
          Page {page} of {pages}
        </span>
        {page < pages ? <a href={`${repositoryPath(name)}?page=${page + 1}`}>Older</a> : null}
      </nav>
    ) : null}
    {pulls?.records === null ? <p class="muted">When tags were pulled cannot be read just now.</p> : null}
    <Activity events={activity} />
  </Layout>
);

/** A tag's last pull and pull count, from its manifest's pull record ("?" when the records cannot be read). */
const PullCells: FC<{ records: TagPulls["records"]; digest: string }> = ({ records, digest }) => {
  if (records === null || !digest) {
    return (
      <>
        <td class="optional last-pulled">?</td>
        <td class="num pulls">?</td>
      </>
    );
  }
  const record = records.get(digest);
  const last = record ? new Date(record.lastPulled) : null;
  return (
    <>
      <td class="optional last-pulled">
        {last ? (
          <time datetime={last.toISOString()}>{last.toISOString().replace("T", " ").slice(0, 19)}</time>
        ) : (
          "never"
        )}
      </td>
      <td class="num pulls">{record ? record.pulls : 0}</td>
    </>
  );
};

/** Who did what to a repository lately, from the audit log (src/audit), newest first. */
const Activity: FC<{ events: RegistryEvent[] | null }> = ({ events }) => (
  <section class="activity">
    <h2>Recent activity</h2>
    {events === null ? (
      <p class="muted">The activity cannot be read just now.</p>
    ) : events.length === 0 ? (
      <p class="muted">Nothing recorded.</p>
    ) : (
      <table class="activity">
        <thead>
          <tr>
            <th>When</th>
            <th>Who</th>
            <th>What</th>
            <th>Tags</th>
            <th class="optional">Digest</th>
          </tr>
        </thead>
        <tbody>
          {events.map((event) => (
            <tr data-action={event.action}>
              <td>
                <time datetime={new Date(event.time).toISOString()}>
                  {new Date(event.time).toISOString().replace("T", " ").slice(0, 19)}
                </time>
              </td>
              <td class="actor">{event.actor.name === "" ? event.actor.kind : event.actor.name}</td>
              <td>
                <code>{event.action}</code>
              </td>
              <td class="tags">{event.tags?.join(", ") ?? ""}</td>
              <td class="optional">
                <code title={event.digest}>{event.digest ? shortDigest(event.digest) : ""}</code>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    )}
  </section>
);

export const ConfirmDeletePage: FC<{ chrome: Chrome; name: string; what: { tag: string } | { digest: string } }> = ({
  chrome,
  name,
  what,
}) => (
  <Layout chrome={chrome}>
    <h1>Delete {"tag" in what ? "a tag" : "a manifest"}?</h1>
    <p>
      {"tag" in what ? (
        <>
          The tag <code>{`${name}:${what.tag}`}</code> will no longer resolve. The image stays if anything else names
          it.
        </>
      ) : (
        <>
          The manifest <code>{`${name}@${what.digest}`}</code> and every tag naming it will be deleted from this
          repository.
        </>
      )}
    </p>
    <form method="post" action={`${repositoryPath(name)}/-/delete`}>
      <input type="hidden" name="csrf" value={chrome.csrf} />
      {"tag" in what ? (
        <input type="hidden" name="tag" value={what.tag} />
      ) : (
        <input type="hidden" name="digest" value={what.digest} />
      )}
      <input type="submit" class="danger" value="Delete" /> <a href={repositoryPath(name)}>Cancel</a>
    </form>
  </Layout>
);

export const LoginPage: FC<{ chrome: Chrome; failed: boolean; user: string }> = ({ chrome, failed, user }) => (
  <Layout chrome={chrome}>
    <h1>Log in</h1>
    <p class="muted">The same users as `docker login`.</p>
    {failed ? <p class="danger">Incorrect username or password.</p> : null}
    <form method="post" action="/login">
      <input type="hidden" name="csrf" value={chrome.csrf} />
      <p>
        <label>
          Username <input name="username" autocomplete="username" value={user} required />
        </label>
      </p>
      <p>
        <label>
          Password <input name="password" type="password" autocomplete="current-password" required />
        </label>
      </p>
      <input type="submit" value="Log in" />
    </form>
  </Layout>
);

export const MessagePage: FC<{ chrome: Chrome; heading: string; message: string; status?: number }> = ({
  chrome,
  heading,
  message,
}) => (
  <Layout chrome={chrome}>
    <h1>{heading}</h1>
    <p>{message}</p>
    <p>
      <a href="/">Repositories</a>
    </p>
  </Layout>
);
