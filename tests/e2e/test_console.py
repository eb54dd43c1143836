"""The web console, in a real browser: Playwright driving Debian's Chromium.

Skipped where no Chromium is installed (with the reason), unless BRIDGE_REQUIRE_BROWSER=1, as
in CI, where `.ci/run` installs it: there a missing browser fails instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bridge.devtools.emulator import EmulatorServer
from tests.support import http
from tests.support.harness import ADMIN_TOKEN, ALL_SECRETS, Bridge, github_headers, wait_for

CHROMIUM = next((p for p in (os.environ.get("BRIDGE_CHROMIUM"), shutil.which("chromium"),
                             "/usr/bin/chromium") if p and os.path.exists(p)), None)
CONSOLE_SECRET_SOURCE = """
[[sources]]
name = "shop"
provider = "shopify"
secret = "shpss_console_secret_9f2a"
"""
PAGES = ["/console/events", "/console/sources", "/console/routes", "/console/dead-letters",
         "/console/activity"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        if os.environ.get("BRIDGE_REQUIRE_BROWSER"):
            pytest.fail("BRIDGE_REQUIRE_BROWSER is set but no Chromium is installed")
        pytest.skip("no Chromium here (Debian: apt-get install chromium); CI installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def console(make_bridge: Callable[..., Bridge], browser: Any) -> Iterator[tuple[Bridge, Any]]:
    bridge = make_bridge(CONSOLE_SECRET_SOURCE)
    context = browser.new_context(base_url=bridge.url)
    page = context.new_page()
    yield bridge, page
    context.close()


def sign_in(page: Any, token: str = ADMIN_TOKEN) -> None:
    page.goto("/console/events")
    assert page.url.endswith("/console/login")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def push(bridge: Bridge, delivery: str) -> dict[str, Any]:
    body = json.dumps({"ref": "refs/heads/main", "after": delivery}).encode()
    answer = bridge.post("/hooks/github", body, github_headers(body, delivery=delivery))
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def admin_get(bridge: Bridge, path: str) -> Any:
    return http.get(f"{bridge.url}{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                     timeout=10).json()


def test_a_wrong_token_cannot_sign_in_and_a_right_one_can(console: tuple[Bridge, Any]) -> None:
    bridge, page = console
    sign_in(page, "not-a-token")
    assert page.url.endswith("/console/login")
    assert "not one of the configured admin tokens" in page.get_by_role("alert").inner_text()
    sign_in(page)
    page.wait_for_url("**/console/events")
    cookie = next(c for c in page.context.cookies() if c["name"] == "bridge_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert ADMIN_TOKEN not in cookie["value"]
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/console/login")
    page.goto("/console/routes")
    assert page.url.endswith("/console/login")  # signed out: every page asks again


def test_an_operator_finds_why_an_event_failed_and_replays_it(
        console: tuple[Bridge, Any], emulator: EmulatorServer) -> None:
    bridge, page = console
    emulator.emulator.add_fault(trigger="github-push", count=1, status=422)
    ack = push(bridge, "console-fail")
    wait_for(lambda: bridge.statuses() == ["dead"])
    bad = b'{"ref":"forged"}'
    forged = bridge.post("/hooks/github", bad, {**github_headers(bad, delivery="forged"),
                                                "X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert forged.status_code == 401
    sign_in(page)
    # Refused at the door: the source's last failure and the request, with the reason.
    page.get_by_role("link", name="Sources").click()
    github_row = page.locator("tr", has=page.get_by_role("link", name="github", exact=True))
    assert "signature" in github_row.inner_text()
    assert "signature" in page.locator("#rejections").inner_text()
    # Stored, forwarded and refused: the event's journey says where and why.
    page.get_by_role("link", name="Events").click()
    page.locator(f'tr[data-id="{ack["id"]}"] a').click()
    page.wait_for_url(f"**/console/events/{ack['id']}")
    journey = page.locator(".timeline").inner_text()
    assert "signature verified, stored" in journey
    assert re.search(r"Attempt 1 to github-push: dead, HTTP 422", journey), journey
    assert "github:console-fail" in page.locator(".facts").inner_text()
    assert "bridge sign --provider github" in page.locator("pre.command").inner_text()
    page.get_by_role("button", name="Replay to today's routes").click()
    assert "replayed to 1 route" in page.get_by_role("status").inner_text()

    def replayed() -> bool:
        page.reload()
        return "Replayed for trigger github-push" in page.locator(".timeline").inner_text() \
            and "delivered, HTTP 202" in page.locator(".timeline").inner_text()

    wait_for(replayed, timeout=20, interval=0.5)
    # The replay superseded the dead delivery: the event shows it, and the dead letters no
    # longer offer it for a redrive that would run the workflow a second time.
    assert "Superseded: a replay of this route was delivered" in page.locator(
        ".timeline").inner_text()
    page.get_by_role("link", name="Dead letters").click()
    assert page.get_by_role("checkbox", name="Select github:console-fail").count() == 0
    assert sorted(bridge.statuses()) == ["delivered", "superseded"]
    assert len(emulator.emulator.executions_for("github-push")) == 1


def test_a_route_is_paused_and_resumed(console: tuple[Bridge, Any],
                                       emulator: EmulatorServer) -> None:
    bridge, page = console
    sign_in(page)
    page.get_by_role("link", name="Routes").click()
    row = page.locator('tr[data-route="github->github-push"]')
    row.get_by_label("Reason").fill("maintenance window")
    row.get_by_role("button", name="Pause github->github-push").click()
    assert "paused: maintenance window" in page.get_by_role("status").inner_text()
    assert bridge.routes()["github->github-push"]["state"] == "paused"
    page.get_by_role("button", name="Resume github->github-push").click()
    assert "resumed" in page.get_by_role("status").inner_text()
    assert bridge.routes()["github->github-push"]["state"] == "active"


def test_new_events_appear_in_the_list_as_they_arrive(console: tuple[Bridge, Any]) -> None:
    bridge, page = console
    sign_in(page)
    page.wait_for_url("**/console/events")
    ack = push(bridge, "console-live")
    page.wait_for_selector(f'tr[data-id="{ack["id"]}"]', timeout=10_000)
    assert "github:console-live" in page.locator(f'tr[data-id="{ack["id"]}"]').inner_text()


def test_posts_need_the_csrf_token_and_the_same_origin(console: tuple[Bridge, Any]) -> None:
    bridge, page = console
    sign_in(page)
    page.wait_for_url("**/console/events")
    route = "/console/routes/github-push/pause"
    without = page.request.post(route, form={"reason": "x"})
    assert without.status == 403
    wrong = page.request.post(route, form={"reason": "x", "csrf": "guess"})
    assert wrong.status == 403
    page.goto("/console/routes")
    token = page.locator('input[name="csrf"]').first.get_attribute("value")
    elsewhere = page.request.post(route, form={"reason": "x", "csrf": token},
                                  headers={"Origin": "https://evil.example"})
    assert elsewhere.status == 403
    assert bridge.routes()["github->github-push"]["state"] == "active"
    # With no session at all, a POST is sent to sign in, and changes nothing.
    anonymous = http.post(f"{bridge.url}{route}", data={"reason": "x", "csrf": token})
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/console/login"
    assert bridge.routes()["github->github-push"]["state"] == "active"


def test_no_page_holds_a_secret_and_every_page_sends_a_strict_policy(
        console: tuple[Bridge, Any], emulator: EmulatorServer) -> None:
    bridge, page = console
    ack = push(bridge, "console-secrets")
    wait_for(lambda: bridge.statuses() == ["delivered"])
    bridge.post("/hooks/shop", b"{}", {"X-Shopify-Hmac-Sha256": "bm90IGl0",
                                       "X-Shopify-Webhook-Id": "w1"})  # refused
    secrets = [*ALL_SECRETS, "shpss_console_secret_9f2a"]
    page.goto("/console/login")
    assert not any(s in page.content() for s in secrets)
    sign_in(page)
    for path in [*PAGES, f"/console/events/{ack['id']}"]:
        answer = page.goto(path)
        assert answer.status == 200, path
        policy = answer.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy
        html = page.content()
        for secret in secrets:
            assert secret not in html, f"a configured secret appeared on {path}"
    body = page.request.get(f"/console/events/{ack['id']}/body")
    assert body.body() == json.dumps({"ref": "refs/heads/main",
                                      "after": "console-secrets"}).encode()


def test_every_control_has_a_label_and_pages_work_from_the_keyboard(
        console: tuple[Bridge, Any], emulator: EmulatorServer) -> None:
    bridge, page = console
    emulator.emulator.add_fault(trigger="github-push", count=1, status=422)
    ack = push(bridge, "console-keys")
    wait_for(lambda: bridge.statuses() == ["dead"])
    # Signing in with the keyboard alone: the token field has focus; Enter submits.
    page.goto("/console/login")
    page.keyboard.type(ADMIN_TOKEN)
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/events")
    unlabelled = """() => [...document.querySelectorAll(
        'input:not([type=hidden]), select, textarea, button')].filter(el => {
          const named = (el.labels && el.labels.length) || el.getAttribute('aria-label')
            || (el.tagName === 'BUTTON' && el.textContent.trim());
          return !named;
        }).map(el => el.outerHTML)"""
    for path in [*PAGES, f"/console/events/{ack['id']}", "/console/login"]:
        page.goto(path)
        assert page.evaluate(unlabelled) == [], path
    # From the list to the event with Tab and Enter.
    page.goto("/console/events")
    link = page.locator(f'tr[data-id="{ack["id"]}"] a')
    for _ in range(40):
        page.keyboard.press("Tab")
        if link.evaluate("el => el === document.activeElement"):
            break
    else:
        raise AssertionError("the event's link cannot be reached with Tab")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/console/events/{ack['id']}")


def test_the_activity_picture_counts_what_arrived(console: tuple[Bridge, Any]) -> None:
    bridge, page = console
    for i in range(3):
        push(bridge, f"console-activity-{i}")
    body = json.dumps({"ref": "refs/heads/main", "after": "console-activity-0"}).encode()
    again = bridge.post("/hooks/github", body, github_headers(body, delivery="console-activity-0"))
    assert again.json()["duplicate"] is True
    bridge.post("/hooks/github", b"{}", {"X-Hub-Signature-256": "sha256=00"})  # refused
    wait_for(lambda: bridge.statuses() == ["delivered"] * 3)
    sign_in(page)

    def counted() -> bool:  # the sampler adds its counts every few seconds
        page.goto("/console/activity?range=1h")
        text = page.locator("main").inner_text()
        return "Webhooks from github: 5 in all" in text and \
            "Deliveries to the platform: 3 in all" in text

    wait_for(counted, timeout=20, interval=1.0)
    svg = page.locator("figure svg").first
    titles = svg.locator("rect title").evaluate_all("els => els.map(e => e.textContent)")
    assert any(t.endswith("accepted: 3") for t in titles), titles
    assert any(t.endswith("duplicate: 1") for t in titles), titles
    assert any(t.endswith("rejected: 1") for t in titles), titles
    assert page.locator("script[src^='http']").count() == 0  # nothing from a CDN


def test_an_input_field_that_came_out_null_is_shown_on_its_delivery(
        make_bridge: Callable[..., Bridge], browser: Any) -> None:
    """`branch = "body.ref[11:]"` is null on a string (JMESPath slices arrays): the event page
    says so beside the delivery, as `routes test` does."""
    bridge = make_bridge("""
[[routes]]
source = "github"
trigger = "by-branch"
events = ["push"]
[routes.input]
branch = "body.ref[11:]"
name = "split(body.ref, '/')[-1]"
""")
    context = browser.new_context(base_url=bridge.url)
    page = context.new_page()
    try:
        ack = push(bridge, "null-field")
        sign_in(page)
        page.goto(f"/console/events/{ack['id']}")
        row = page.locator("tr", has=page.get_by_text("by-branch"))
        assert row.locator("[data-null-field]").all_inner_texts() == [
            "input.branch came out null"]
        plain = page.locator("tr", has=page.get_by_text("github-push", exact=True))
        assert plain.locator("[data-null-field]").count() == 0
    finally:
        context.close()


def test_a_failed_workflow_has_its_own_badge_and_filter(
        console: tuple[Bridge, Any], emulator: EmulatorServer) -> None:
    bridge, page = console
    emulator.emulator.configure(failing_triggers=["github-push"], execution_delay=0.05)
    failed = push(bridge, "wf-failed")
    wait_for(lambda: [x["status"] for x in bridge.executions()] == ["failed"])
    emulator.emulator.configure(failing_triggers=[])
    fine = push(bridge, "wf-fine")
    wait_for(lambda: sorted(x["status"] for x in bridge.executions()) == ["completed", "failed"])
    sign_in(page)
    row = page.locator(f'tr[data-id="{failed["id"]}"]')
    assert row.locator(".state.delivered").inner_text() == "delivered"  # the trigger call
    assert row.locator(".state.failed").inner_text() == "failed"  # the workflow: red, its own
    page.get_by_label("Workflow").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**workflow=failed**")
    shown = page.locator("#events tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.id)")
    assert shown == [failed["id"]] and fine["id"] not in shown
    listed = http.get(f"{bridge.url}/admin/events", params={"workflow": "failed"},
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()["events"]
    assert [e["id"] for e in listed] == [failed["id"]]


def test_the_routes_page_shows_each_routes_glue_and_recent_events(
        make_bridge: Callable[..., Bridge], browser: Any) -> None:
    bridge = make_bridge("""
[[routes]]
source = "github"
trigger = "by-branch"
events = ["push"]
filter = "starts_with(body.ref, 'refs/heads/')"
[routes.input]
branch = "split(body.ref, '/')[-1]"
[routes.input.repo]
name = "body.repository.full_name"
""")
    context = browser.new_context(base_url=bridge.url)
    page = context.new_page()
    try:
        ack = push(bridge, "routes-page")
        sign_in(page)
        page.goto("/console/routes")
        row = page.locator('tr[data-route="github->by-branch"]')
        assert row.locator("[data-filter]").inner_text() == "starts_with(body.ref, 'refs/heads/')"
        assert row.locator("[data-input]").inner_text().splitlines() == [
            "branch = split(body.ref, '/')[-1]", "repo.name = body.repository.full_name"]
        row.get_by_role("link", name="all of its events").click()
        page.wait_for_url("**route=github-%3Eby-branch**")
        assert "Only events routed to github->by-branch" in page.locator("#route-filter").inner_text()
        assert page.locator("#events tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.id)") == [ack["id"]]
        page.goto("/console/routes")
        assert page.locator('tr[data-route="github->by-branch"]').get_by_role(
            "link", name=re.compile(r"^\d{4}-")).count() == 1
    finally:
        context.close()


@pytest.mark.parametrize("width", [1280, 800])
def test_every_page_fits_its_width(make_bridge: Callable[..., Bridge], browser: Any,
                                   emulator: EmulatorServer, width: int) -> None:
    """No page scrolls sideways at 1280 or 800 pixels; the resend commands wrap whole; the
    activity charts fill their cards; the dead letters' bulk controls keep each action on a
    line of its own; /favicon.ico is the console's icon."""
    bridge = make_bridge()
    emulator.emulator.add_fault(trigger="github-push", count=1, status=422)
    ack = push(bridge, f"fits-{width}")
    wait_for(lambda: bridge.statuses() == ["dead"])
    context = browser.new_context(base_url=bridge.url, viewport={"width": width, "height": 900})
    page = context.new_page()
    try:
        sign_in(page)
        for path in [*PAGES, f"/console/events/{ack['id']}"]:
            page.goto(path)
            overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
            assert overflow <= 0, (path, overflow)
        page.goto(f"/console/events/{ack['id']}")
        command = page.locator("pre.command")
        assert command.evaluate("e => e.scrollWidth <= e.clientWidth"), "a command is cut off"
        page.goto("/console/activity")
        assert page.locator('.ranges [aria-current="page"]').inner_text() == "last 1h"
        for card in page.locator("svg").all():
            ratio = card.evaluate("s => s.getBoundingClientRect().width"
                                  " / s.parentElement.getBoundingClientRect().width")
            assert ratio > 0.9, ratio
        page.goto("/console/dead-letters")
        rows = page.locator("fieldset.bulk .row")
        assert rows.count() == 3
        redrive = rows.nth(1).get_by_role("button", name="Redrive")
        force = rows.nth(1).get_by_label("redrive even those that may already have run")
        assert abs(redrive.bounding_box()["y"] - force.bounding_box()["y"]) < 20
        icon = page.request.get("/favicon.ico")
        assert icon.status == 200 and icon.headers["content-type"] == "image/svg+xml"
    finally:
        context.close()
