import js from "@eslint/js";
import { createNodeResolver, importX } from "eslint-plugin-import-x";
import tseslint from "typescript-eslint";

/**
 * The layers of src/, lowest first (docs/architecture.md, "Layers"): a folder may import
 * the folders before it, never one after it. `app.ts` and `index.ts` compose them all.
 */
const LAYERS = [
  "src/oci", // the protocol's vocabulary: digests, names, manifests, errors, access scopes
  "src/settings", // every setting, parsed once
  "src/registry", // storage and the repository API (the seam every change passes through)
  "src/uploads", // the upload engine (a Durable Object per upload), publishing through the registry
  "src/gc", // the collector, removing through the registry
  "src/quotas", // storage quotas per namespace (a seam policy and listener, a Durable Object per namespace)
  "src/mirror", // the mirror, a decorator of the repository
  "src/policies", // policies on the seam: immutable tags
  "src/events", // change events: their model, formats, signatures and delivery (a seam listener)
  "src/audit", // the audit log in D1 (a seam listener, and the logins)
  "src/auth", // who may do what
  "src/routes", // the HTTP API
  "src/ui", // the web pages
];
const COMPOSITION = ["src/app.ts", "src/index.ts"];

/** For each layer, the ones above it (and the composition root) it must not import. */
const layerZones = LAYERS.map((layer, index) => ({
  target: `./${layer}`,
  from: [...LAYERS.slice(index + 1), ...COMPOSITION].map((path) => `./${path}`),
  message: `${layer} is below these in docs/architecture.md's layers; invert the dependency (a resolver, a listener, a parameter)`,
}));

/**
 * Neither routes nor pages reach storage: they read and change repositories through the
 * repository API (registry.ts, repository.ts), and know nothing of the mirror, which
 * decorates repositories where app.ts registers it.
 */
const storageInternals = [
  "storage",
  "paths",
  "blob-store",
  "linked-blob-store",
  "manifests",
  "tags",
  "catalog",
  "referrers",
  "collection",
  "inventory",
  "edge-cache",
].map((name) => `./src/registry/${name}.ts`);
const routeZones = ["src/routes", "src/ui"].map((layer) => ({
  target: `./${layer}`,
  from: [
    ...storageInternals,
    "./src/mirror",
    "./src/gc/run-tables.ts",
    "./src/gc/sweep.ts",
    // The audit log's table: routes and pages use src/audit/audit.ts.
    "./src/audit/audit-log.ts",
  ],
  message:
    "routes and pages use the repository API (src/registry/registry.ts, repository.ts), never storage or the mirror",
}));

export default tseslint.config(
  { ignores: ["node_modules/", ".wrangler/", "build/", "worker-configuration.d.ts"] },
  js.configs.recommended,
  ...tseslint.configs.strict,
  {
    files: ["**/*.ts"],
    rules: {
      "@typescript-eslint/no-explicit-any": "error",
      "@typescript-eslint/no-non-null-assertion": "error",
    },
  },
  {
    files: ["src/**/*.ts", "src/**/*.tsx"],
    plugins: { "import-x": importX },
    settings: {
      "import-x/resolver-next": [createNodeResolver({ extensions: [".ts", ".tsx", ".d.ts", ".js"] })],
      // no-cycle follows imports into other files: it must parse them as TypeScript.
      "import-x/parsers": { "@typescript-eslint/parser": [".ts", ".tsx"] },
    },
    rules: {
      "import-x/no-restricted-paths": ["error", { zones: [...layerZones, ...routeZones] }],
      "import-x/no-cycle": ["error", { ignoreExternal: true }],
    },
  },
  {
    files: ["scripts/**/*.mjs", "test/e2e/**/*.mjs", "bench/**/*.mjs"],
    languageOptions: {
      globals: {
        process: "readonly",
        console: "readonly",
        Buffer: "readonly",
        URL: "readonly",
        fetch: "readonly",
        setTimeout: "readonly",
        clearTimeout: "readonly",
        setInterval: "readonly",
        clearInterval: "readonly",
        setImmediate: "readonly",
        AbortController: "readonly",
        performance: "readonly",
        URLSearchParams: "readonly",
        Headers: "readonly",
        Response: "readonly",
        TextEncoder: "readonly",
      },
    },
  },
);
