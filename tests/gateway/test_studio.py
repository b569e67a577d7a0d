"""The studio in real headless Chromium (Debian's `chromium`, driven by Playwright): it
loads without console errors, shows a traffic change made with the CLI within 2 s, shows
a rollout started with the CLI and aborts it from the page, shows a batch job's progress
reach 100%; a reader's page has no Abort button and the API refuses the reader (403); a
user signs in at an OpenID Connect provider (authorization code with PKCE).
Screenshots of each page go to the test's temporary folder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import Gateway, start_gateway
from tests.gateway.conftest import STUDIO_CLIENT, IdentityProvider

# Runs once, on the SQLite pass: what it checks does not depend on the store.
pytestmark = pytest.mark.store_independent

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def studio_gateway(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> Iterator[tuple[Gateway, Path]]:
    tmp = tmp_path_factory.mktemp("studio")
    gw = start_gateway(tmp / "home")
    gw.create_endpoint(tmp, "shop", "auth_mode: none\n")
    gw.deploy(tmp, "shop", "blue", model_dir / "classifier.onnx")
    gw.deploy(tmp, "shop", "green", model_dir / "classifier-v2.onnx", all_traffic=False)
    yield gw, tmp
    gw.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:  # .ci/run installs Debian's chromium
        pytest.fail("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def open_studio(browser: Any, gw: Gateway, token: str) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{gw.url}/studio/")
    page.fill("#token", token)
    page.click("#signin button")
    page.wait_for_selector("#nav a.current")
    return page, errors


def test_the_studio_as_an_owner(
    studio_gateway: tuple[Gateway, Path], browser: Any, model_dir: Path, tmp_path: Path
) -> None:
    gw, _ = studio_gateway
    page, errors = open_studio(browser, gw, gw.admin_token)
    page.wait_for_selector('tr[data-endpoint="shop"] .bar span[title="blue 100%"]')
    page.screenshot(path=str(tmp_path / "endpoints.png"), full_page=True)
    # A traffic change made with the CLI shows within 2 s.
    gw.cli("endpoint", "update", "-n", "shop", "--traffic", "blue=70,green=30")
    page.wait_for_selector('tr[data-endpoint="shop"] .bar span[title="green 30%"]', timeout=2000)

    # A deployment's page: live charts and its log.
    for _ in range(20):
        gw.cli("endpoint", "invoke", "-n", "shop", "--request-file", str(_request(tmp_path)))
    page.goto(f"{gw.url}/studio/#/endpoint/shop")
    page.wait_for_selector('div[data-deployment="blue"] canvas')
    assert page.locator('div[data-deployment="blue"] canvas').count() == 5
    page.screenshot(path=str(tmp_path / "deployment.png"), full_page=True)

    # A rollout started with the CLI shows its phase; Abort on the page ends it.
    start_slow_rollout(gw)
    page.goto(f"{gw.url}/studio/#/rollouts")
    page.wait_for_selector('tr[data-endpoint="shop"] td[data-state="stepping"]', timeout=5000)
    page.screenshot(path=str(tmp_path / "rollouts.png"), full_page=True)
    page.click('tr[data-endpoint="shop"] button[data-action="abort"]')
    page.wait_for_selector('tr[data-endpoint="shop"] td[data-state="aborted"]', timeout=5000)
    _, out = gw.cli("rollout", "status", "-e", "shop")
    assert json.loads(out)["state"] == "aborted"

    # A batch job's progress bar reaches 100%.
    x = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    pq.write_table(pa.table({"input": pa.array(list(x))}), tmp_path / "rows.parquet")
    gw.cli(
        "batch",
        "invoke",
        "-e",
        "shop",
        "--input",
        str(tmp_path / "rows.parquet"),
        "--output-path",
        str(tmp_path / "out"),
        "--mini-batch-size",
        "100",
        "--wait",
    )
    page.goto(f"{gw.url}/studio/#/jobs")
    page.wait_for_selector('tr[data-job] .progress[data-percent="100"]', timeout=5000)
    page.screenshot(path=str(tmp_path / "jobs.png"), full_page=True)

    for name in ("models", "monitors", "audit"):
        page.goto(f"{gw.url}/studio/#/{name}")
        page.wait_for_selector(f'#nav a.current[href="#/{name}"]')
        page.wait_for_timeout(300)
        page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    assert page.locator("table tr").count() > 1  # the audit log's entries
    assert not page.is_visible("#error")
    assert errors == [], errors
    page.close()


def test_the_sign_in_form_says_where_the_admin_token_is(
    studio_gateway: tuple[Gateway, Path], browser: Any
) -> None:
    page = browser.new_page()
    page.goto(f"{studio_gateway[0].url}/studio/")
    page.wait_for_selector("#signin", state="visible")
    hint = page.inner_text("#token-hint")
    assert "admin_token" in hint and "servegate serve --home" in hint, hint
    assert page.is_visible("#token-hint")
    page.close()


def test_names_from_the_address_stay_one_path_segment(
    studio_gateway: tuple[Gateway, Path], browser: Any
) -> None:
    """A crafted link (`#/endpoint/..%2Faudit`) cannot make the signed-in page call another
    route: names go into API paths encoded."""
    gw, _ = studio_gateway
    page, _ = open_studio(browser, gw, gw.admin_token)
    called: list[str] = []
    page.on("request", lambda request: called.append(request.url))
    page.goto(f"{gw.url}/studio/#/endpoint/..%2Faudit")
    page.wait_for_selector("#error:not([hidden])")
    paths = [url.split(gw.url, 1)[-1] for url in called if "/management/" in url]
    assert "/management/endpoints/..%2Faudit" in paths, paths
    assert not any(p.startswith("/management/audit") for p in paths), paths
    page.close()


def test_a_reader_sees_no_actions_and_is_refused(
    studio_gateway: tuple[Gateway, Path], browser: Any
) -> None:
    gw, _ = studio_gateway
    _, out = gw.cli(
        "access", "token", "create", "-n", "studio-reader", "--role", "reader", "-o", "json"
    )
    token = json.loads(out)["token"]
    start_slow_rollout(gw)
    try:
        page, errors = open_studio(browser, gw, token)
        page.goto(f"{gw.url}/studio/#/rollouts")
        page.wait_for_selector('tr[data-endpoint="shop"] td[data-state="stepping"]', timeout=5000)
        assert page.locator('button[data-action="abort"]').count() == 0
        assert errors == [], errors  # (the refused call below logs one, on purpose)
        status = page.evaluate(
            """async (token) => (await fetch('/management/endpoints/shop/rollouts/abort',
                {method: 'POST', headers: {Authorization: `Bearer ${token}`}})).status""",
            token,
        )
        assert status == 403
        page.close()
    finally:
        gw.cli("rollout", "abort", "-e", "shop")


def test_signing_in_at_the_identity_provider(
    studio_gateway: tuple[Gateway, Path],
    browser: Any,
    provider: IdentityProvider,
    tmp_path: Path,
) -> None:
    """The authorization code flow with PKCE against the test's provider: the studio
    redeems the code in the browser and calls the API with the provider's token, as the
    user its claims name, with the role their group maps to."""
    gw = start_gateway(
        tmp_path / "home",
        "--oidc-issuer",
        provider.issuer,
        "--oidc-audience",
        "servegate",
        "--oidc-roles-claim",
        "groups",
        "--oidc-role",
        "ml-readers=reader",
        "--oidc-client-id",
        STUDIO_CLIENT,
    )
    try:
        sign_in = httpx.get(f"{gw.url}/studio/sign-in").json()["oidc"]
        assert sign_in["client_id"] == STUDIO_CLIENT
        assert sign_in["authorization_endpoint"] == f"{provider.issuer}/authorize"
        # A gateway without a provider client offers admin tokens only.
        assert httpx.get(f"{studio_gateway[0].url}/studio/sign-in").json() == {"oidc": None}

        provider.user = {"preferred_username": "carol@example.com", "groups": ["ml-readers"]}
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{gw.url}/studio/#/audit")
        page.wait_for_selector("#provider-signin")
        page.screenshot(path=str(tmp_path / "sign-in.png"), full_page=True)
        page.click("#provider-signin")
        page.wait_for_selector("#nav a.current")
        assert page.inner_text("#who").startswith("user:carol@example.com (reader)")
        # Back on the page the sign-in started from, with no code left in the address.
        assert page.url == f"{gw.url}/studio/#/audit"
        page.wait_for_selector('#nav a.current[href="#/audit"]')
        assert errors == [], errors
        assert provider.codes == {}  # the code was redeemed

        # An answer that no sign-in from this tab asked for is refused.
        page.goto(f"{gw.url}/studio/?code=forged&state=forged")
        page.wait_for_selector("#error:not([hidden])")
        assert "does not match a sign-in from this tab" in page.inner_text("#error")
        assert page.is_visible("#signin")
        page.close()
    finally:
        gw.stop()


def start_slow_rollout(gw: Gateway) -> None:
    """blue -> green, its first step held for two minutes (it stays active in the test)."""
    gw.cli(
        "rollout",
        "start",
        "-e",
        "shop",
        "--to",
        "green",
        "--steps",
        "40,100",
        "--step-interval",
        "120s",
    )


def _request(folder: Path) -> Path:
    path = folder / "request.json"
    path.write_text(json.dumps({"input_data": [[1.0, 2.0, 3.0, 4.0]]}))
    return path
