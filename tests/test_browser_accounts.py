"""Accounts on the chat page, in a real browser (Debian's Chromium through Playwright) against a gateway with --auth.

The login and setup views, the account menu (API keys, sign out), and the admin view, each checked against what the
server then does: a key the page created works with `Authorization: Bearer` and stops working once revoked, a
signed-out cookie gets 401, and a user the admin disables is sent back to the login view on their open page.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from browser_support import Relay, chromium, finished, new_page, open_chat, page_gateway, send
from conftest import Server, script, start_gateway

PASSWORD = "correct horse battery"
SETUP_LINK = re.compile(r"(http://\S+/chat/setup#token=\S+)")


# ---- processes and browser -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gateway(simulator: Server) -> Iterator[Server]:
    """Accounts on; its first admin comes from `clawdbot user add --admin`, so its setup link is never used."""
    server = page_gateway(simulator.url, "--auth", "--heartbeat", "0.5")
    add_user(server, "owner", admin=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


@pytest.fixture
def pages(browser: Browser) -> Iterator[PageMaker]:
    """Fresh tabs, each with its own cookies; a script error or a CSP violation in any of them fails the test."""
    maker = PageMaker(browser)
    yield maker
    for tab in maker.opened:
        tab.context.close()
    assert not maker.problems


class PageMaker:
    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.problems: list[str] = []
        self.opened: list[Page] = []

    def __call__(self, gateway: Server, **options: object) -> Page:
        tab = new_page(self.browser, gateway, self.problems, **options)
        self.opened.append(tab)
        return tab


# ---- helpers ---------------------------------------------------------------------------------------------------------
def add_user(gateway: Server, name: str, password: str = PASSWORD, *, admin: bool = False) -> None:
    """`clawdbot user add`, on the gateway's own data directory, the password on stdin."""
    data_dir = gateway.args[gateway.args.index("--data-dir") + 1]
    command = [sys.executable, "-m", "clawdbot", "user", "add", name, "--password-stdin", "--data-dir", data_dir]
    done = subprocess.run(
        [*command, *(["--admin"] if admin else [])],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@contextlib.contextmanager
def signed_in_client(gateway: Server, name: str = "owner", password: str = PASSWORD) -> Iterator[httpx.Client]:
    """An httpx client with a session cookie and its CSRF token, as a browser would send them."""
    with httpx.Client(base_url=gateway.url) as client:
        answer = client.post("/chat/api/session", json={"name": name, "password": password})
        answer.raise_for_status()
        client.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
        yield client
        client.delete("/chat/api/session")


def make_user(gateway: Server, name: str, password: str = PASSWORD, *, admin: bool = False) -> str:
    """Through the admin API as the module's first admin (quicker than a process of `clawdbot user add`)."""
    with signed_in_client(gateway) as owner:
        body = {"name": name, "password": password, "role": "admin" if admin else "user"}
        created = owner.post("/chat/api/users", json=body)
        created.raise_for_status()
        return str(created.json()["user"]["id"])


def in_chat(page: Page) -> None:
    """The chat is shown and connected (the login view is gone)."""
    expect(page.locator("body")).to_have_attribute("data-transport", re.compile("websocket|sse"))
    expect(page.get_by_test_id("model-picker").locator("option")).not_to_have_count(0)
    expect(page.get_by_test_id("login-name")).to_be_hidden()


def sign_in(page: Page, name: str, password: str = PASSWORD, path: str = "/chat") -> None:
    page.goto(path)
    page.get_by_test_id("login-name").fill(name)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()
    in_chat(page)


def menu(page: Page, item: str) -> None:
    page.get_by_test_id("account-menu").click()
    page.get_by_test_id(item).click()


def cookie(page: Page) -> str | None:
    found = [c["value"] for c in page.context.cookies() if c["name"] == "clawdbot_session"]
    return found[0] if found else None


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def user_row(page: Page, name: str):  # type: ignore[no-untyped-def]
    return page.locator(f"[data-testid=admin-user][data-name='{name}']")


# ---- 1. login --------------------------------------------------------------------------------------------------------
def test_a_user_made_by_the_cli_signs_in_and_chats_and_a_wrong_password_is_refused(
    pages: PageMaker, gateway: Server, simulator: Server
) -> None:
    add_user(gateway, "ana")
    page = pages(gateway)
    page.goto("/chat")
    expect(page.get_by_test_id("login-name")).to_be_focused()
    expect(page.get_by_test_id("message-list")).to_be_hidden()  # nothing of the chat before signing in
    expect(page.get_by_test_id("login-note")).to_be_hidden()  # an admin exists: no word of the setup link

    page.get_by_test_id("login-name").fill("ana")
    page.get_by_test_id("login-password").fill("not the password")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_have_text("Wrong name or password.")
    assert cookie(page) is None

    page.get_by_test_id("login-password").fill(PASSWORD)
    page.get_by_test_id("login-password").press("Enter")
    in_chat(page)
    expect(page).to_have_url(gateway.url + "/chat")
    expect(page.get_by_test_id("account-name")).to_have_text("ana")

    # A change made with the cookie carries the CSRF token: creating the conversation and sending work.
    script(simulator, {"match": "signed in", "reply": "Hello, ana.", "thinking": ""})
    send(page, "hello while signed in")
    expect(finished(page)).to_contain_text("Hello, ana.")
    listed = page.request.get(gateway.url + "/chat/api/conversations").json()["conversations"]
    assert [c["title"] for c in listed] == ["hello while signed in"]

    # Another tab of the same browser is signed in too, and /chat/login leads back to the chat.
    again = page.context.new_page()
    again.goto("/chat/login")
    in_chat(again)
    expect(again).to_have_url(gateway.url + "/chat")


def test_login_page_says_how_long_to_wait_after_too_many_attempts(pages: PageMaker, gateway: Server) -> None:
    make_user(gateway, "guesswork")
    page = pages(gateway)
    page.goto("/chat/login")
    for _ in range(8):  # five are free, then each one waits longer
        page.get_by_test_id("login-name").fill("guesswork")
        page.get_by_test_id("login-password").fill("wrong guess")
        page.get_by_test_id("login-submit").click()
        error = page.get_by_test_id("login-error")
        expect(error).to_be_visible()
        if "Too many attempts" in (error.text_content() or ""):
            break
        expect(page.get_by_test_id("login-submit")).to_be_enabled()
    expect(page.get_by_test_id("login-error")).to_have_text(re.compile(r"^Too many attempts\. Try again in \d+ s\.$"))
    expect(page.get_by_test_id("login-submit")).to_be_disabled()  # until the server will listen again


# ---- 2. the first admin, from the setup link -------------------------------------------------------------------------
def test_the_setup_link_makes_the_first_admin_and_works_once(pages: PageMaker, simulator: Server) -> None:
    fresh = start_gateway(simulator.url, "--auth", "--heartbeat", "0.5")
    try:
        assert fresh.proc.stdout is not None
        second = fresh.proc.stdout.readline()
        found = SETUP_LINK.search(second)
        assert found, f"no setup link on the second line: {second!r}"
        link = found.group(1)

        page = pages(fresh)
        page.goto("/chat")  # no admin yet: the login view says where to go
        expect(page.get_by_test_id("login-note")).to_have_text(
            "No admin yet: open the setup link clawdbot printed at startup."
        )

        page.goto(link)
        expect(page.get_by_test_id("setup-name")).to_be_focused()
        page.get_by_test_id("setup-name").fill("root")
        page.get_by_test_id("setup-password").fill(PASSWORD)
        page.get_by_test_id("setup-repeat").fill(PASSWORD + " but different")
        page.get_by_test_id("setup-submit").click()
        assert page.get_by_test_id("setup-repeat").evaluate("input => input.validationMessage") == (
            "The two passwords differ."
        )
        assert cookie(page) is None  # nothing was sent

        page.get_by_test_id("setup-repeat").fill(PASSWORD)
        page.get_by_test_id("setup-submit").click()
        in_chat(page)
        expect(page).to_have_url(fresh.url + "/chat")  # the token is out of the address bar (and the history entry)
        expect(page.get_by_test_id("account-name")).to_have_text("root")
        page.get_by_test_id("account-menu").click()
        expect(page.get_by_test_id("admin-open")).to_be_visible()
        page.keyboard.press("Escape")
        expect(page.get_by_test_id("account-items")).to_be_hidden()
        expect(page.get_by_test_id("account-menu")).to_be_focused()

        other = pages(fresh)  # the link works once
        other.goto(link)
        other.get_by_test_id("setup-name").fill("intruder")
        other.get_by_test_id("setup-password").fill(PASSWORD)
        other.get_by_test_id("setup-repeat").fill(PASSWORD)
        other.get_by_test_id("setup-submit").click()
        expect(other.get_by_test_id("setup-error")).to_contain_text(re.compile("not valid|Setup is closed"))
        assert cookie(other) is None
        other.get_by_test_id("setup-to-login").click()
        expect(other.get_by_test_id("login-name")).to_be_visible()
        assert "#token" not in other.url
    finally:
        for tab in pages.opened:
            tab.goto("about:blank")
        fresh.stop()


# ---- 3. sign out -----------------------------------------------------------------------------------------------------
def test_signing_out_returns_to_the_login_view_and_the_cookie_stops_working(pages: PageMaker, gateway: Server) -> None:
    make_user(gateway, "leaver")
    page = pages(gateway)
    sign_in(page, "leaver")
    page.get_by_test_id("composer-input").fill("a draft of mine")
    old = cookie(page)
    assert old

    page.get_by_test_id("account-menu").press("ArrowDown")  # the menu opens on its first item, by keyboard
    expect(page.get_by_test_id("keys-open")).to_be_focused()
    page.keyboard.press("End")
    expect(page.get_by_test_id("sign-out")).to_be_focused()
    page.keyboard.press("Enter")

    expect(page.get_by_test_id("login-name")).to_be_visible()
    expect(page.get_by_test_id("login-note")).to_have_text("You have signed out.")
    expect(page.get_by_test_id("message-list")).to_be_hidden()
    expect(page).to_have_url(gateway.url + "/chat/login")
    assert cookie(page) is None
    assert page.get_by_test_id("composer-input").input_value() == ""  # nothing left for the next person
    assert page.request.get(gateway.url + "/chat/api/conversations").status == 401
    stolen = httpx.get(gateway.url + "/chat/api/conversations", cookies={"clawdbot_session": old})
    assert stolen.status_code == 401  # the session is gone from the server, not only from this browser

    page.reload()
    expect(page.get_by_test_id("login-name")).to_be_visible()
    page.get_by_test_id("login-name").fill("leaver")
    page.get_by_test_id("login-password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    in_chat(page)
    expect(page).to_have_url(gateway.url + "/chat")


def test_a_sign_out_the_server_refuses_says_why_and_stays_signed_in(pages: PageMaker, gateway: Server) -> None:
    make_user(gateway, "stayer")
    page = pages(gateway)
    sign_in(page, "stayer")
    failing = {"error": "the database is not answering", "code": "internal_error"}
    page.route(
        "**/chat/api/session",
        lambda route: (
            route.fulfill(status=500, json=failing) if route.request.method == "DELETE" else route.continue_()
        ),
    )
    menu(page, "sign-out")
    expect(page.get_by_test_id("error")).to_have_text("The database is not answering")
    expect(page.get_by_test_id("login-name")).to_be_hidden()
    page.unroute("**/chat/api/session")
    menu(page, "sign-out")
    expect(page.get_by_test_id("login-note")).to_have_text("You have signed out.")


# ---- 4. API keys -----------------------------------------------------------------------------------------------------
def test_an_api_key_is_shown_once_works_as_a_bearer_and_stops_when_revoked(pages: PageMaker, gateway: Server) -> None:
    make_user(gateway, "scripter")
    page = pages(gateway)
    sign_in(page, "scripter")
    menu(page, "keys-open")
    dialog = page.get_by_test_id("keys-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_test_id("keys-empty")).to_be_visible()

    dialog.get_by_test_id("keys-name").fill("laptop scripts")
    dialog.get_by_test_id("keys-name").press("Enter")
    secret_box = dialog.get_by_test_id("keys-secret-box")
    expect(secret_box).to_be_visible()
    expect(secret_box).to_contain_text("you will not see it again")
    expect(dialog.get_by_test_id("keys-secret")).to_have_text(re.compile(r"^cbk_\S{20,}$"))
    secret = dialog.get_by_test_id("keys-secret").inner_text()
    dialog.get_by_test_id("keys-copy").click()
    expect(dialog.get_by_test_id("keys-copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret

    row = dialog.get_by_test_id("keys-row")
    expect(row).to_have_count(1)
    expect(row.get_by_test_id("keys-row-name")).to_have_text("laptop scripts")
    prefix = row.get_by_test_id("keys-row-prefix").inner_text().rstrip("…")
    assert secret.startswith(prefix)
    assert secret not in (dialog.get_by_test_id("keys-list").text_content() or "")

    # The key works where keys are accepted, with no cookie.
    assert httpx.get(gateway.url + "/chat/api/conversations", headers=bearer(secret)).status_code == 200
    assert httpx.get(gateway.url + "/v1/models", headers=bearer(secret)).status_code == 200
    assert httpx.get(gateway.url + "/v1/models").status_code == 401

    # Closed and opened again, the dialog never shows the secret again.
    dialog.get_by_test_id("keys-close").click()
    expect(dialog).to_be_hidden()
    menu(page, "keys-open")
    expect(secret_box).to_be_hidden()
    expect(dialog.get_by_test_id("keys-row")).to_have_count(1)
    assert secret not in (dialog.text_content() or "")

    dialog.get_by_test_id("keys-revoke").click()
    confirm = page.get_by_test_id("confirm-dialog")
    expect(confirm).to_contain_text("laptop scripts")
    confirm.get_by_test_id("confirm-cancel").click()
    expect(dialog.get_by_test_id("keys-row")).to_have_count(1)
    assert httpx.get(gateway.url + "/chat/api/conversations", headers=bearer(secret)).status_code == 200
    dialog.get_by_test_id("keys-revoke").click()
    confirm.get_by_test_id("confirm-ok").click()
    expect(dialog.get_by_test_id("keys-row")).to_have_count(0)
    expect(dialog.get_by_test_id("keys-empty")).to_be_visible()
    assert httpx.get(gateway.url + "/chat/api/conversations", headers=bearer(secret)).status_code == 401
    assert httpx.get(gateway.url + "/v1/models", headers=bearer(secret)).status_code == 401


def test_changing_the_password_keeps_this_page_and_ends_the_other_sessions(pages: PageMaker, gateway: Server) -> None:
    make_user(gateway, "rotator")
    page, elsewhere = pages(gateway), pages(gateway)
    sign_in(page, "rotator")
    sign_in(elsewhere, "rotator")
    elsewhere.get_by_test_id("composer-input").fill("typed before the password changed")

    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    menu(page, "password-open")
    dialog = page.get_by_test_id("password-dialog")
    dialog.get_by_test_id("password-current").fill("not it at all")
    dialog.get_by_test_id("password-new").fill("a brand new secret")
    dialog.get_by_test_id("password-repeat").fill("a brand new secret")
    dialog.get_by_test_id("password-save").click()
    expect(dialog.get_by_test_id("password-error")).to_have_text("The current password is wrong.")
    dialog.get_by_test_id("password-current").fill(PASSWORD)
    dialog.get_by_test_id("password-save").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_test_id("toast")).to_contain_text("Password changed")

    # The other browser's socket is closed (1008): it shows the login view, its draft kept for after.
    expect(elsewhere.get_by_test_id("login-name")).to_be_visible()
    expect(elsewhere.get_by_test_id("login-note")).to_contain_text("Sign in again")
    expect(elsewhere.get_by_test_id("login-name")).to_have_value("rotator")
    expect(elsewhere.get_by_test_id("login-password")).to_be_focused()
    elsewhere.get_by_test_id("login-password").fill("a brand new secret")
    elsewhere.get_by_test_id("login-submit").click()
    in_chat(elsewhere)
    expect(elsewhere.get_by_test_id("composer-input")).to_have_value("typed before the password changed")
    # This page's session lives on, and so does its socket: only the other sessions' sockets were closed.
    assert page.request.get(gateway.url + "/chat/api/conversations").ok
    page.wait_for_timeout(500)  # Playwright hands events over only while it is called: wait in the page
    assert sockets == [], "this page's socket was closed although its session lives on"
    expect(page.get_by_test_id("login-name")).to_be_hidden()
    expect(page.get_by_test_id("link-state")).to_be_hidden()


# ---- 5. the admin ----------------------------------------------------------------------------------------------------
def test_a_user_who_is_no_admin_sees_no_admin_entry(pages: PageMaker, gateway: Server) -> None:
    make_user(gateway, "plain")
    page = pages(gateway)
    sign_in(page, "plain", path="/chat/admin")
    expect(page).to_have_url(gateway.url + "/chat")  # the admin view is not for them
    expect(page.get_by_test_id("admin-dialog")).to_be_hidden()
    page.get_by_test_id("account-menu").click()
    expect(page.get_by_test_id("keys-open")).to_be_visible()
    expect(page.get_by_test_id("sign-out")).to_be_visible()
    expect(page.get_by_test_id("admin-open")).to_be_hidden()
    assert page.request.get(gateway.url + "/chat/api/users").status == 403


def test_the_admin_disables_a_user_whose_open_page_goes_to_the_login_view(pages: PageMaker, gateway: Server) -> None:
    make_user(gateway, "boss", admin=True)
    make_user(gateway, "worker")
    admin, worker = pages(gateway), pages(gateway)
    sign_in(worker, "worker")
    worker.get_by_test_id("composer-input").fill("half a thought")
    sign_in(admin, "boss")
    menu(admin, "admin-open")
    expect(admin).to_have_url(gateway.url + "/chat/admin")
    row = user_row(admin, "worker")
    expect(row.get_by_test_id("admin-user-status")).to_have_text("active")
    expect(user_row(admin, "boss")).to_contain_text("you")

    row.get_by_test_id("admin-toggle-disabled").click()
    expect(row.get_by_test_id("admin-user-status")).to_have_text("disabled")
    expect(worker.get_by_test_id("login-name")).to_be_visible()  # the socket was closed; no endless reconnecting
    expect(worker.get_by_test_id("login-note")).to_contain_text("Your account has been disabled.")
    expect(worker.get_by_test_id("message-list")).to_be_hidden()
    worker.get_by_test_id("login-password").fill(PASSWORD)
    worker.get_by_test_id("login-submit").click()
    expect(worker.get_by_test_id("login-error")).to_have_text("This account is disabled. Ask an admin to enable it.")

    row.get_by_test_id("admin-toggle-disabled").click()
    expect(row.get_by_test_id("admin-user-status")).to_have_text("active")
    worker.get_by_test_id("login-submit").click()
    in_chat(worker)
    expect(worker.get_by_test_id("composer-input")).to_have_value("half a thought")

    # Admins may not disable themselves (the server refuses it too): their own row offers only Edit.
    expect(user_row(admin, "boss").get_by_test_id("admin-toggle-disabled")).to_have_count(0)
    expect(user_row(admin, "boss").get_by_test_id("admin-edit-open")).to_be_visible()
    admin.get_by_test_id("admin-close").click()
    expect(admin.get_by_test_id("admin-dialog")).to_be_hidden()
    expect(admin).to_have_url(gateway.url + "/chat")


def test_the_admin_adds_a_user_and_sets_limits_models_and_a_new_password(pages: PageMaker, gateway: Server) -> None:
    make_user(gateway, "chief", admin=True)
    admin = pages(gateway)
    sign_in(admin, "chief", path="/chat/admin")  # the address opens the admin view after signing in
    dialog = admin.get_by_test_id("admin-dialog")
    expect(dialog).to_be_visible()

    dialog.get_by_test_id("admin-add-name").fill("chief")
    dialog.get_by_test_id("admin-add-password").fill(PASSWORD)
    dialog.get_by_test_id("admin-add-submit").click()
    expect(dialog.get_by_test_id("admin-error")).to_contain_text("already")  # 409 name_taken, in its words

    dialog.get_by_test_id("admin-add-name").fill("carol")
    dialog.get_by_test_id("admin-add-password").fill(PASSWORD)
    dialog.get_by_test_id("admin-add-admin").check()
    dialog.get_by_test_id("admin-add-submit").click()
    row = user_row(admin, "carol")
    expect(row.get_by_test_id("admin-user-role")).to_have_text("admin")
    expect(row.get_by_test_id("admin-user-limits")).to_have_text("none")
    expect(row.get_by_test_id("admin-user-models")).to_have_text("all")
    expect(row.get_by_test_id("admin-user-login")).to_have_text("never")

    row.get_by_test_id("admin-edit-open").click()
    edit = admin.get_by_test_id("admin-edit")
    expect(edit).to_be_visible()
    edit.get_by_test_id("admin-edit-role").select_option("user")
    edit.get_by_test_id("admin-edit-max-running").fill("2")
    edit.get_by_test_id("admin-edit-rpm").fill("30")
    edit.get_by_test_id("admin-edit-tokens-day").fill("50000")
    edit.locator("[data-testid=admin-edit-model][data-model='qwen3:32b']").check()
    edit.get_by_test_id("admin-edit-password").fill("carols new password")
    edit.get_by_test_id("admin-edit-save").click()
    expect(edit).to_be_hidden()
    expect(row.get_by_test_id("admin-user-role")).to_have_text("user")
    expect(row.get_by_test_id("admin-user-limits")).to_have_text("2 at once · 30/min · 50,000 tokens/day")
    expect(row.get_by_test_id("admin-user-models")).to_have_text("qwen3:32b")

    carol = next(u for u in admin.request.get(gateway.url + "/chat/api/users").json()["users"] if u["name"] == "carol")
    assert (carol["role"], carol["max_running"], carol["requests_per_minute"], carol["models"]) == (
        "user",
        2,
        30,
        ["qwen3:32b"],
    )
    assert (carol["tokens_per_day"], carol["tokens_per_month"]) == (50000, None)
    old = httpx.post(gateway.url + "/chat/api/session", json={"name": "carol", "password": PASSWORD})
    assert old.status_code == 401
    new = httpx.post(gateway.url + "/chat/api/session", json={"name": "carol", "password": "carols new password"})
    assert new.status_code == 200

    # Emptied, a limit is cleared (null), and no model ticked means every model.
    row.get_by_test_id("admin-edit-open").click()
    expect(edit.get_by_test_id("admin-edit-max-running")).to_have_value("2")
    edit.get_by_test_id("admin-edit-max-running").fill("")
    edit.get_by_test_id("admin-edit-tokens-day").fill("")
    edit.locator("[data-testid=admin-edit-model][data-model='qwen3:32b']").uncheck()
    edit.get_by_test_id("admin-edit-save").click()
    expect(row.get_by_test_id("admin-user-limits")).to_have_text("30/min")
    expect(row.get_by_test_id("admin-user-models")).to_have_text("all")
    carol = next(u for u in admin.request.get(gateway.url + "/chat/api/users").json()["users"] if u["name"] == "carol")
    assert (carol["max_running"], carol["requests_per_minute"], carol["models"]) == (None, 30, None)
    expect(row.get_by_test_id("admin-user-login")).not_to_have_text("never")  # carol signed in meanwhile
    admin.get_by_test_id("admin-close").click()


def test_the_admin_view_fits_a_phone(pages: PageMaker, gateway: Server) -> None:
    make_user(gateway, "pocket", admin=True)
    phone = pages(
        gateway,
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
        color_scheme="dark",
    )
    phone.goto("/chat")
    box = phone.get_by_test_id("login-name")
    assert box.evaluate("el => getComputedStyle(el).fontSize") == "16px"  # iOS zooms into smaller inputs
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    sign_in(phone, "pocket", path="/chat/admin")
    expect(phone.get_by_test_id("admin-dialog")).to_be_visible()
    expect(user_row(phone, "pocket")).to_be_visible()
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    dialog_width = phone.get_by_test_id("admin-dialog").evaluate("el => el.getBoundingClientRect().width")
    assert dialog_width <= 390


# ---- 6. how a page learns its session ended: a 401 anywhere, the socket, the event stream ----------------------------
def test_a_stale_csrf_token_is_refreshed_once_and_the_change_goes_through(pages: PageMaker, gateway: Server) -> None:
    make_user(gateway, "twotabs")
    page = pages(gateway)
    sign_in(page, "twotabs")
    changes: list[tuple[str, str, str | None]] = []
    page.on(
        "request",
        lambda r: changes.append((r.method, r.url, r.headers.get("x-csrf-token"))) if r.method != "GET" else None,
    )
    # Signing in again in this browser (another tab, say) replaces the cookie: this tab's token is the old session's.
    page.request.post(gateway.url + "/chat/api/session", data={"name": "twotabs", "password": PASSWORD})

    page.get_by_test_id("settings-button").click()
    page.get_by_test_id("settings-system-prompt").fill("Be brief.")
    page.get_by_test_id("settings-save").click()  # no conversation yet: kept for the first send
    send(page, "a change with a stale token")
    expect(page.get_by_test_id("conversation-item")).to_have_count(1)
    expect(page.get_by_test_id("error")).to_be_hidden()
    creates = [(token or "") for method, url, token in changes if url.endswith("/chat/api/conversations")]
    assert len(creates) == 2, changes  # refused once (403 csrf), then sent again with the fresh token
    assert all(creates)
    assert creates[0] != creates[1]
    listed = page.request.get(gateway.url + "/chat/api/conversations").json()["conversations"]
    assert len(listed) == 1


def test_the_event_stream_of_a_disabled_user_ends_in_the_login_view(
    pages: PageMaker, gateway: Server, simulator: Server
) -> None:
    user_id = make_user(gateway, "streamer")
    page = pages(gateway)
    sign_in(page, "streamer", path="/chat?transport=sse")
    expect(page.locator("body")).to_have_attribute("data-transport", "sse")
    script(simulator, {"match": "over sse", "reply": "Streamed.", "thinking": ""})
    send(page, "over sse")  # a conversation open: its event stream is what the page listens to
    expect(finished(page)).to_contain_text("Streamed.")
    with signed_in_client(gateway) as owner:
        owner.patch(f"/chat/api/users/{user_id}", json={"disabled": True}).raise_for_status()
    expect(page.get_by_test_id("login-name")).to_be_visible()
    expect(page.get_by_test_id("login-note")).to_contain_text("Your account has been disabled.")
    expect(page.get_by_test_id("message-list")).to_be_hidden()


def test_a_websocket_refused_at_its_upgrade_leads_to_the_login_view(pages: PageMaker, gateway: Server) -> None:
    make_user(gateway, "upgrader")
    relay = Relay(gateway)
    try:
        page = pages(gateway)
        sign_in(page, "upgrader", path=relay.url + "/chat")
        session = cookie(page)
        with httpx.Client(base_url=gateway.url, cookies={"clawdbot_session": session or ""}) as client:
            token = client.get("/chat/api/session").json()["csrf_token"]
            relay.freeze()  # the server's close (1008) never arrives: the page only sees silence, then a new try
            upgrades = relay.upgrades
            assert client.delete("/chat/api/session", headers={"X-CSRF-Token": token}).status_code == 204
        expect(page.get_by_test_id("login-name")).to_be_visible()
        assert relay.upgrades > upgrades  # it tried again, was refused (401), asked, and stopped
        time.sleep(1.5)
        assert relay.upgrades == upgrades + 1, "it kept reconnecting"
    finally:
        relay.close()


def test_without_accounts_there_is_no_account_menu(pages: PageMaker, simulator: Server) -> None:
    open_gateway = start_gateway(simulator.url)  # --no-auth: everyone is this machine's owner
    try:
        page = pages(open_gateway)
        page.goto("/chat")
        open_chat(page)
        expect(page.get_by_test_id("account-menu")).to_be_hidden()
        expect(page.get_by_test_id("login-name")).to_be_hidden()
    finally:
        for tab in pages.opened:
            tab.goto("about:blank")
        open_gateway.stop()
