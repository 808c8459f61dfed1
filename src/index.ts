import { app } from "./app";

export { LoginLimiter } from "./auth/login-limiter";
export { UploadSession } from "./uploads/upload-session";

export default {
  fetch: app.fetch,
} satisfies ExportedHandler<Env>;
