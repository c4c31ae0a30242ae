"""The web console under ACLs, in a real headless browser: a producer-only user (alice,
logged in with HTTP Basic on a TLS, SASL and authorizer cluster) sees only her topic,
no create, config, partition or delete forms, cannot browse but can produce; the
cluster page, which needs Describe on the cluster, shows the refusal's message.
Skipped like tests/console/test_console_browser.py without Playwright or chromium."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.console.test_console_browser import WAIT_MS, _chromium, sync_playwright
from tests.security.http_acl_support import USERS, acl_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_producer_only_user_sees_and_may_only_what_acls_allow(tmp_path: Path) -> None:
    if sync_playwright is None:
        pytest.skip("playwright is not installed (pip install '.[test]')")
    if _chromium() is None:
        pytest.skip("no chromium executable (apt-get install chromium)")
    with acl_cluster(tmp_path) as (pc, _ca), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(),
                                    args=["--no-sandbox", "--disable-gpu"])
        ctx = browser.new_context(ignore_https_errors=True, http_credentials={
            "username": "alice", "password": USERS["alice"]})
        page = ctx.new_page()
        page.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        base = f"https://127.0.0.1:{pc.nodes[1].http_port}"

        def goto(fragment: str) -> None:
            page.goto(f"{base}/#/{fragment}")
            page.wait_for_selector(f"body[data-page='{fragment.split('/')[0]}']")

        try:
            goto("cluster")
            assert "Logged in as User:alice" in page.locator("#security").inner_text()
            page.wait_for_selector(".msg.error")
            assert page.locator(".msg.error").inner_text() == (
                "Cannot read the cluster: User:alice may not Describe cluster 'kafka-cluster'")
            goto("topics")
            page.wait_for_selector("tr[data-topic='orders']")
            assert page.locator("tr[data-topic]").count() == 1
            assert page.locator("#create-topic").count() == 0
            goto("topics/orders")
            page.wait_for_selector("text=You may not read this topic's configs.")
            assert page.locator("text=Browse messages").count() == 0
            for form in ("#alter-configs", "#add-partitions", "#delete-topic"):
                assert page.locator(form).count() == 0, form
            goto("messages")
            assert page.locator("#browse button[type=submit]").is_disabled()
            page.fill("#produce-value", "from the console")
            page.click("#produce button[type=submit]")
            page.wait_for_selector("text=Written to orders-0")
        finally:
            browser.close()
        assert not errors, f"JavaScript errors in the console: {errors}"
