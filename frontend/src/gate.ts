// What stands before the chat when nobody is signed in: the login form, the first admin's setup form (from the
// one-time link clawdbot prints), and a "cannot reach the server" notice.
import { api, ApiError, plain, setCsrfToken } from "./api";
import type { SignedOutReason } from "./api";
import { byId } from "./dom";
import type { Session } from "./types";

export interface LoginNote {
  /** No admin exists yet: the way in is the setup link, not this form. */
  setup?: boolean;
  /** Why a page that was in the chat is asking again. */
  reason?: SignedOutReason;
  signedOut?: boolean;
  /** Who was signed in, so only the password is to be typed again. */
  name?: string | null;
}

type Panel = "login" | "setup" | "offline";

export class Gate {
  private readonly gate = byId("gate");
  private readonly panels: Record<Panel, HTMLElement> = {
    login: byId("login-form"),
    setup: byId("setup-form"),
    offline: byId("gate-offline"),
  };
  private readonly loginName = byId<HTMLInputElement>("login-name");
  private readonly loginPassword = byId<HTMLInputElement>("login-password");
  private readonly loginSubmit = byId<HTMLButtonElement>("login-submit");
  private readonly loginError = byId("login-error");
  private readonly loginNote = byId("login-note");
  private readonly setupName = byId<HTMLInputElement>("setup-name");
  private readonly setupPassword = byId<HTMLInputElement>("setup-password");
  private readonly setupRepeat = byId<HTMLInputElement>("setup-repeat");
  private readonly setupSubmit = byId<HTMLButtonElement>("setup-submit");
  private readonly setupError = byId("setup-error");
  private token = "";
  private waitTimer: number | undefined;
  private retryOffline: () => void = () => undefined;

  /** `signedIn` gets the new session; `fromSetup` when it came from the setup link. */
  constructor(private readonly signedIn: (session: Session, fromSetup: boolean) => void) {
    this.panels.login.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.login();
    });
    this.panels.setup.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.setup();
    });
    this.setupRepeat.addEventListener("input", () => this.setupRepeat.setCustomValidity(""));
    byId("gate-retry").addEventListener("click", () => this.retryOffline());
    byId("setup-to-login").addEventListener("click", () => {
      history.replaceState(null, "", "/chat"); // the token is of no more use
      this.showLogin();
    });
  }

  get isShown(): boolean {
    return !this.gate.hidden;
  }

  showLogin(note: LoginNote = {}): void {
    const lines: string[] = [];
    if (note.reason === "disabled") lines.push("Your account has been disabled. Ask an admin to enable it.");
    else if (note.reason === "expired") lines.push("Your session has ended. Sign in again to go on.");
    else if (note.signedOut) lines.push("You have signed out.");
    if (note.setup) lines.push("No admin yet: open the setup link clawdbot printed at startup.");
    this.loginNote.textContent = lines.join(" ");
    this.loginNote.hidden = lines.length === 0;
    this.loginError.hidden = true;
    this.loginPassword.value = "";
    if (note.name) this.loginName.value = note.name;
    this.open("login");
    (this.loginName.value ? this.loginPassword : this.loginName).focus();
  }

  showSetup(token: string): void {
    this.token = token;
    this.setupError.hidden = true;
    this.open("setup");
    this.setupName.focus();
  }

  showOffline(error: unknown, retry: () => void): void {
    this.retryOffline = retry;
    byId("gate-offline-text").textContent = plain(error);
    this.open("offline");
    byId("gate-retry").focus();
  }

  hide(): void {
    this.gate.hidden = true;
    this.loginPassword.value = "";
    this.setupPassword.value = this.setupRepeat.value = "";
  }

  private open(panel: Panel): void {
    for (const [name, element] of Object.entries(this.panels)) element.hidden = name !== panel;
    this.gate.hidden = false;
    document.title = panel === "setup" ? "Set up · clawdbot" : "Sign in · clawdbot";
  }

  private async login(): Promise<void> {
    if (this.loginSubmit.disabled) return;
    this.loginSubmit.disabled = true;
    this.loginError.hidden = true;
    let waiting = false;
    try {
      const answer = await api.signIn(this.loginName.value.trim(), this.loginPassword.value);
      setCsrfToken(answer.csrf_token);
      this.loginPassword.value = "";
      this.signedIn({ ...answer, via: "session" }, false);
    } catch (error) {
      this.loginError.textContent = loginProblem(error);
      this.loginError.hidden = false;
      const wait = error instanceof ApiError && error.code === "too_many_attempts" ? error.details.retry_after : 0;
      if (wait) {
        waiting = true;
        this.holdSubmit(wait); // the button comes back when the server will listen again
      } else {
        this.loginPassword.select();
        this.loginPassword.focus();
      }
    } finally {
      if (!waiting) this.loginSubmit.disabled = false;
    }
  }

  private holdSubmit(seconds: number): void {
    window.clearTimeout(this.waitTimer);
    this.waitTimer = window.setTimeout(() => {
      this.loginSubmit.disabled = false;
      this.loginPassword.focus();
    }, seconds * 1000);
  }

  private async setup(): Promise<void> {
    if (this.setupPassword.value !== this.setupRepeat.value) {
      this.setupRepeat.setCustomValidity("The two passwords differ.");
      this.setupRepeat.reportValidity();
      return;
    }
    this.setupSubmit.disabled = true;
    this.setupError.hidden = true;
    try {
      const answer = await api.setup(this.token, this.setupName.value.trim(), this.setupPassword.value);
      setCsrfToken(answer.csrf_token);
      this.signedIn({ ...answer, via: "session" }, true);
    } catch (error) {
      this.setupError.textContent = setupProblem(error);
      this.setupError.hidden = false;
    } finally {
      this.setupSubmit.disabled = false;
    }
  }
}

/** The login's refusals, in words (a 429's retry time comes from plain()). */
function loginProblem(error: unknown): string {
  if (!(error instanceof ApiError)) return plain(error);
  if (error.code === "bad_credentials") return "Wrong name or password.";
  if (error.code === "disabled") return "This account is disabled. Ask an admin to enable it.";
  return plain(error);
}

function setupProblem(error: unknown): string {
  if (error instanceof ApiError && error.code === "bad_token") {
    return "This setup link is not valid (it works once, until clawdbot restarts). Use the newest link it printed.";
  }
  if (error instanceof ApiError && error.code === "setup_closed") {
    return "Setup is closed: an admin exists already. Sign in instead.";
  }
  return plain(error);
}
