// Boot: who is this? Signed in → the chat; not → the login view (or, from the setup link, the first admin's form).
import "./styles.css";
import { api, ApiError, onSignedOut, setCsrfToken } from "./api";
import { App } from "./app";
import { Gate } from "./gate";
import { fillIcons } from "./icons";
import type { Session } from "./types";

/** A server from before accounts has no GET /chat/api/session: it is everyone's, as with --no-auth. */
const NOBODY: Session = {
  user: {
    id: "",
    name: "",
    role: "admin",
    disabled: false,
    sso: false,
    max_running: null,
    requests_per_minute: null,
    tokens_per_day: null,
    tokens_per_month: null,
    models: null,
    created_at: 0,
    last_login_at: null,
  },
  csrf_token: null,
  via: "none",
};

const gate = new Gate((session, fromSetup) => void enter(session, fromSetup));
let app: App | null = null;
let started = false;

function page(): string {
  return location.pathname.replace(/\/+$/, "") || "/chat";
}

/** Into the chat: at /chat (a conversation in the hash stays; the setup token does not), or the admin view. */
async function enter(session: Session, fromSetup: boolean): Promise<void> {
  const admin = page() === "/chat/admin" && session.user.role === "admin";
  if (page() !== "/chat" && !admin) history.replaceState(null, "", "/chat" + (fromSetup ? "" : location.hash));
  else if (fromSetup) history.replaceState(null, "", "/chat");
  gate.hide();
  app ??= new App({ signOut });
  if (started) await app.returned(session);
  else {
    started = true;
    await app.start(session);
  }
  if (admin) app.openAdmin();
}

/** Rejects (the page shows why) when the server could not sign this session out; a 401 means it is gone already. */
async function signOut(): Promise<void> {
  try {
    await api.signOut();
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) throw error;
  }
  setCsrfToken(null);
  app?.suspend(true);
  history.replaceState(null, "", "/chat/login");
  gate.showLogin({ signedOut: true });
}

// Any 401 (or a socket closed for policy) while in the chat: the login view over it, the draft kept for later.
onSignedOut((reason) => {
  if (gate.isShown || !started) return;
  setCsrfToken(null);
  app?.suspend(false);
  gate.showLogin({ reason, name: app?.userName });
});

async function boot(): Promise<void> {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (page() === "/chat/setup" && token) {
    gate.showSetup(token);
    return;
  }
  let session: Session;
  try {
    session = await api.session();
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) session = NOBODY;
    else if (error instanceof ApiError && error.status === 401) return gate.showLogin({ setup: error.details.setup });
    else if (error instanceof ApiError && error.code === "disabled") return gate.showLogin({ reason: "disabled" });
    else return gate.showOffline(error, () => void boot());
  }
  setCsrfToken(session.csrf_token);
  await enter(session, false);
}

fillIcons(document);
void boot();
