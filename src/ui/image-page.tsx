/** @jsxImportSource hono/jsx */
import type { FC } from "hono/jsx";
import type { Descriptor } from "../oci/manifest";
import type { ImageDetails } from "./data";
import { formatBytes, imagePath, Layout, PullCommand, repositoryPath, shortDigest, type Chrome } from "./pages";

/**
 * The page of one image or index (src/ui): its config, labels, layers, platforms,
 * annotations and referrers, as the registry stores them; everything shown is escaped by
 * JSX (it is user input).
 */

const Annotations: FC<{ annotations?: Record<string, string> | undefined }> = ({ annotations }) =>
  annotations && Object.keys(annotations).length > 0 ? (
    <table class="annotations">
      <tbody>
        {Object.entries(annotations).map(([key, value]) => (
          <tr>
            <th>
              <code>{key}</code>
            </th>
            <td>{value}</td>
          </tr>
        ))}
      </tbody>
    </table>
  ) : null;

const DescriptorRows: FC<{ name: string; descriptors: Descriptor[]; link: boolean }> = ({
  name,
  descriptors,
  link,
}) => (
  <>
    {descriptors.map((descriptor) => (
      <tr>
        <td>
          {link ? (
            <a href={imagePath(name, descriptor.digest.value)}>
              {descriptor.platform ?? shortDigest(descriptor.digest.value)}
            </a>
          ) : (
            <code title={descriptor.digest.value}>{shortDigest(descriptor.digest.value)}</code>
          )}
        </td>
        <td class="optional">
          <code>{descriptor.mediaType}</code>
        </td>
        <td class="num">{formatBytes(descriptor.size)}</td>
      </tr>
    ))}
  </>
);

export const ImagePage: FC<{ chrome: Chrome; name: string; host: string; image: ImageDetails; canDelete: boolean }> = ({
  chrome,
  name,
  host,
  image,
  canDelete,
}) => {
  const { manifest, config } = image;
  const total = manifest.blobs.reduce((sum, blob) => sum + blob.size, 0);
  return (
    <Layout chrome={chrome}>
      <p>
        <a href={repositoryPath(name)}>{name}</a>
      </p>
      <h1>
        <code>{image.digest.value}</code>
      </h1>
      <p class="muted">
        {manifest.kind === "index" ? "Index" : manifest.artifactType ? "Artifact" : "Image"} ·{" "}
        <code>{image.mediaType}</code>
        {manifest.kind === "image" ? ` · ${formatBytes(total)}` : ""}
        {image.tags.length > 0 ? ` · tags: ${image.tags.join(", ")}${image.moreTags ? ", …" : ""}` : ""}
      </p>
      <PullCommand command={`docker pull ${host}/${name}@${image.digest.value}`} />
      {manifest.subject ? (
        <p>
          Refers to{" "}
          <a href={imagePath(name, manifest.subject.digest.value)}>{shortDigest(manifest.subject.digest.value)}</a>
          {manifest.artifactType ? (
            <>
              {" "}
              as <code>{manifest.artifactType}</code>
            </>
          ) : null}
        </p>
      ) : null}
      {manifest.kind === "index" ? (
        <>
          <h2>Platforms</h2>
          <table class="platforms">
            <tbody>
              <DescriptorRows name={name} descriptors={manifest.manifests} link={true} />
            </tbody>
          </table>
        </>
      ) : (
        <>
          {config ? (
            <>
              <h2>Config</h2>
              <table class="config">
                <tbody>
                  {config.os || config.architecture ? (
                    <tr>
                      <th>Platform</th>
                      <td>{[config.os, config.architecture, config.variant].filter(Boolean).join("/")}</td>
                    </tr>
                  ) : null}
                  {config.created ? (
                    <tr>
                      <th>Created</th>
                      <td>{config.created}</td>
                    </tr>
                  ) : null}
                  {config.entrypoint ? (
                    <tr>
                      <th>Entrypoint</th>
                      <td>
                        <code>{JSON.stringify(config.entrypoint)}</code>
                      </td>
                    </tr>
                  ) : null}
                  {config.cmd ? (
                    <tr>
                      <th>Command</th>
                      <td>
                        <code>{JSON.stringify(config.cmd)}</code>
                      </td>
                    </tr>
                  ) : null}
                  {config.workingDir ? (
                    <tr>
                      <th>Working directory</th>
                      <td>
                        <code>{config.workingDir}</code>
                      </td>
                    </tr>
                  ) : null}
                  {config.user ? (
                    <tr>
                      <th>User</th>
                      <td>
                        <code>{config.user}</code>
                      </td>
                    </tr>
                  ) : null}
                </tbody>
              </table>
              {config.labels && Object.keys(config.labels).length > 0 ? (
                <>
                  <h2>Labels</h2>
                  <Annotations annotations={config.labels} />
                </>
              ) : null}
            </>
          ) : null}
          <h2>Layers</h2>
          <table class="layers">
            <tbody>
              <DescriptorRows name={name} descriptors={manifest.blobs.slice(manifest.config ? 1 : 0)} link={false} />
            </tbody>
          </table>
        </>
      )}
      {manifest.annotations ? (
        <>
          <h2>Annotations</h2>
          <Annotations annotations={manifest.annotations} />
        </>
      ) : null}
      <h2>Referrers</h2>
      {image.referrers.size === 0 ? (
        <p class="muted">No signatures, SBOMs or attestations refer to this manifest.</p>
      ) : (
        [...image.referrers.entries()].map(([type, descriptors]) => (
          <section class="referrers" data-artifact-type={type}>
            <h3>
              <code>{type}</code>
            </h3>
            <ul>
              {descriptors.map((descriptor) => (
                <li>
                  <a href={imagePath(name, descriptor.digest)}>{shortDigest(descriptor.digest)}</a>{" "}
                  <span class="muted">{formatBytes(descriptor.size)}</span>
                </li>
              ))}
            </ul>
          </section>
        ))
      )}
      <details>
        <summary>Manifest</summary>
        <pre>{image.json}</pre>
      </details>
      {canDelete ? (
        <p>
          <a
            class="danger"
            href={`${repositoryPath(name)}/-/delete?${new URLSearchParams({ digest: image.digest.value }).toString()}`}
          >
            Delete this manifest
          </a>
        </p>
      ) : null}
    </Layout>
  );
};
