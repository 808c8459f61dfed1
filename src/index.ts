import { app } from "./app";

export { UploadSession } from "./uploads/upload-session";

export default {
  fetch: app.fetch,
} satisfies ExportedHandler<Env>;
