"""The web console in a real headless browser (Debian's chromium, driven by
Playwright) against a real cluster of 3 controllers and 3 brokers.

Skipped, with the reason, when Playwright or a chromium executable is missing
(`.ci/run` installs Debian's chromium when it runs as root). Screenshots of the main
pages go to a temporary folder (named on stdout), or to `DMQ_CONSOLE_SHOTS` when set
(that is how docs/console/*.png are made).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import ProcessCluster, wait_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

SESSION_TIMEOUT_MS = 3000
WAIT_MS = 15_000  # the longest any page element is waited for

try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None  # type: ignore[assignment]
    Page = Any  # type: ignore[misc,assignment]


def _chromium() -> str | None:
    for name in (os.environ.get("DMQ_CHROMIUM", ""), "chromium", "chromium-browser",
                 "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


def _get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _send(port: int, method: str, path: str, body: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dmq", *args], capture_output=True,
                          text=True, timeout=timeout)


def _tool(tool: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    code = f"import sys; from dmq.cli.tools import {tool}_main; {tool}_main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ProcessCluster]:
    if sync_playwright is None:
        pytest.skip("playwright is not installed (pip install '.[test]')")
    if _chromium() is None:
        pytest.skip("no chromium executable (apt-get install chromium; .ci/run does it as root)")
    with ProcessCluster(controllers=3, brokers=3, http=True, settings={
            "broker.session.timeout.ms": SESSION_TIMEOUT_MS,
            "broker.heartbeat.interval.ms": 500}) as pc:
        pc.start()
        for n in pc.nodes.values():
            assert n.http_port is not None
            wait_port(n.http_port)
        port = pc.nodes[1].http_port
        def up() -> bool:  # every broker registered and a controller active
            status, d = _get(port, "/ui/api/overview")
            return status == 200 and d["controllerId"] >= 0 and sum(
                b["state"] == "ONLINE" for b in d["brokers"]) == 3

        wait_until(up, 30, "the cluster up", interval_s=0.2)
        yield pc


@pytest.fixture(scope="module")
def shots() -> Path:
    target = os.environ.get("DMQ_CONSOLE_SHOTS")
    if target:
        path = Path(target)
        path.mkdir(parents=True, exist_ok=True)
    else:
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="dmq-console-shots-"))
    print(f"console screenshots in {path}")
    return path


@pytest.fixture(scope="module")
def page(cluster: ProcessCluster) -> Iterator[Page]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(),
                                    args=["--no-sandbox", "--disable-gpu"])
        ctx = browser.new_context(viewport={"width": 1280, "height": 800},
                                  color_scheme="light")
        pg = ctx.new_page()
        pg.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        yield pg
        browser.close()
        assert not errors, f"JavaScript errors in the console: {errors}"


def base(cluster: ProcessCluster) -> str:
    return f"http://127.0.0.1:{cluster.nodes[1].http_port}"


def goto(page: Page, cluster: ProcessCluster, fragment: str) -> None:
    page.goto(f"{base(cluster)}/#/{fragment}")
    page.wait_for_selector(f"body[data-page='{fragment.split('/')[0].split('?')[0]}']")


def test_cluster_page_shows_controllers_brokers_and_that_security_is_off(
        cluster: ProcessCluster, page: Page, shots: Path) -> None:
    goto(page, cluster, "cluster")
    page.wait_for_selector("tr[data-broker='103'][data-state='ONLINE']")
    assert page.locator("tr[data-broker][data-state='ONLINE']").count() == 3
    assert page.get_by_text("LEADER", exact=True).count() == 1
    assert page.locator(".badge", has_text="active").count() == 1
    assert page.locator("#security").is_visible()
    assert "Security is off" in page.locator("#security").inner_text()
    page.screenshot(path=str(shots / "cluster-start.png"))


def test_static_paths_serve_only_the_console_files(cluster: ProcessCluster) -> None:
    port = cluster.nodes[1].http_port
    for path, status, kind in [("/ui/app.js", 200, "text/javascript"),
                               ("/ui/vendor/chart.js.LICENSE.md", 200, "text/markdown"),
                               ("/ui/topics", 200, "text/html"),  # a page address
                               ("/ui/nope.js", 404, None), ("/ui/%00.js", 400, None),
                               ("/ui/..%2f__init__.py", 200, "text/html"),  # not the file
                               ("/ui/api/nope", 404, None)]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                got, ctype = r.status, r.headers["Content-Type"]
        except urllib.error.HTTPError as e:
            got, ctype = e.code, None
        assert got == status, (path, got)
        assert kind is None or ctype.startswith(kind), (path, ctype)


def test_console_is_also_on_the_node_protocol_port(cluster: ProcessCluster) -> None:
    port = cluster.nodes[101].port  # a broker's own port hands HTTP over
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        assert r.status == 200 and b"dmq console" in r.read()
    status, d = _get(port, "/ui/api/overview")
    assert status == 200 and d["nodeId"] == 101
    assert d["security"] == {"enabled": False, "tls": False, "clientAuth": "none",
                             "saslMechanisms": [], "saslOnProtocolPort": False,
                             "httpLogin": False, "authorizer": False}, d["security"]


def test_create_topic_through_the_form_shows_in_dmq_topics_list(
        cluster: ProcessCluster, page: Page, shots: Path) -> None:
    goto(page, cluster, "topics")
    page.fill("#topic-name", "web-orders")
    page.fill("#topic-partitions", "3")
    page.fill("#topic-rf", "3")
    page.click("#create-topic button[type=submit]")
    page.wait_for_selector(".msg.done >> text=Topic web-orders created.")
    page.wait_for_selector("tr[data-topic='web-orders']")
    r = _cli("topics", "list", "--bootstrap", cluster.bootstrap)
    assert r.returncode == 0, r.stderr
    assert "web-orders" in r.stdout.split()
    page.screenshot(path=str(shots / "topics.png"))
    page.click("a[href='#/topics/web-orders']")
    page.wait_for_selector("table[aria-label='Partitions of web-orders'] tbody tr >> nth=2")
    rows = page.locator("table[aria-label='Partitions of web-orders'] tbody tr")
    assert rows.count() == 3
    assert "101" in rows.nth(0).inner_text() or "102" in rows.nth(0).inner_text() or \
        "103" in rows.nth(0).inner_text()
    page.screenshot(path=str(shots / "topic.png"))


def test_topic_page_forms_add_partitions_change_a_config_and_delete(
        cluster: ProcessCluster, page: Page) -> None:
    status, _ = _send(cluster.nodes[1].http_port, "POST", "/ui/api/topics",
                      b'{"name": "web-doomed", "partitions": 1, "replicationFactor": 2}')
    assert status == 201
    goto(page, cluster, "topics/web-doomed")
    page.fill("#add-partitions input[name=count]", "2")
    page.click("#add-partitions button[type=submit]")
    page.wait_for_selector(".msg.done >> text=web-doomed now has 2 partitions.")
    page.wait_for_selector("table[aria-label='Partitions of web-doomed'] tbody tr >> nth=1")
    page.fill("#alter-configs input[name=key]", "retention.ms")
    page.fill("#alter-configs input[name=value]", "3600000")
    page.click("#alter-configs button[type=submit]")
    page.wait_for_selector(".msg.done >> text=retention.ms set to 3600000.")
    r = _cli("topics", "describe", "web-doomed", "--bootstrap", cluster.bootstrap)
    assert r.returncode == 0 and "3600000" in r.stdout, r.stdout + r.stderr
    page.fill("#delete-topic input[name=confirm]", "web-doome")
    page.click("#delete-topic button[type=submit]")
    alert = page.wait_for_selector("#delete-topic + div .msg.error")
    assert alert is not None and "exact name" in alert.inner_text()
    page.fill("#delete-topic input[name=confirm]", "web-doomed")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete-topic button[type=submit]")
    page.wait_for_selector("body[data-page='topics'] tr[data-topic]")
    wait_until(lambda: "web-doomed" not in _cli("topics", "list", "--bootstrap",
                                                cluster.bootstrap).stdout,
               10, "web-doomed no longer listed after its deletion", interval_s=0.2)


def test_the_refresh_after_a_change_leaves_the_next_page_alone(
        cluster: ProcessCluster, page: Page) -> None:
    """A form that changed a topic rebuilds its page a moment later; a user who went on
    to another page meanwhile must keep what they typed there (it used to be rebuilt,
    and a half-filled produce form was sent empty)."""
    pg = page.context.new_page()
    try:
        pg.set_default_timeout(WAIT_MS)
        pg.clock.install()  # the page's timers run only when the test says so
        goto(pg, cluster, "topics/web-orders")
        pg.fill("#alter-configs input[name=key]", "retention.ms")
        pg.fill("#alter-configs input[name=value]", "7200000")
        pg.click("#alter-configs button[type=submit]")
        pg.wait_for_selector(".msg.done >> text=retention.ms set to 7200000.")
        goto(pg, cluster, "messages?topic=web-orders")
        pg.fill("#produce-key", "typed")
        pg.clock.run_for(2000)  # past the topic page's refresh
        # a rebuild would be on screen once its request for the topics is answered:
        # one more request, sent after it, is answered after it
        pg.evaluate("fetch('/ui/api/topics').then((r) => r.json())")
        assert pg.input_value("#produce-key") == "typed"
    finally:
        pg.close()


def test_produce_through_the_form_shows_in_the_browser_and_dmq_consume(
        cluster: ProcessCluster, page: Page, shots: Path) -> None:
    status, _ = _send(cluster.nodes[1].http_port, "POST", "/ui/api/topics",
                      b'{"name": "web-records", "partitions": 1, "replicationFactor": 3}')
    assert status in (201, 409)
    goto(page, cluster, "messages?topic=web-records&partition=0")
    page.fill("#produce-partition", "0")
    page.fill("#produce-key", "order-1")
    page.fill("#produce-value", '{"item": "tea", "qty": 2}')
    page.fill("#produce textarea[name=headers]", "source: console")
    page.click("#produce button[type=submit]")
    page.wait_for_selector(".msg.done >> text=Written to web-records-0 at offset")
    page.click("#browse button[type=submit]")
    row = page.wait_for_selector("#records tr[data-offset='0']")
    assert row is not None and "order-1" in row.inner_text()
    page.check("#browse input[name=format][value=hex]")
    page.wait_for_selector("#records pre >> text=6f 72 64 65 72 2d 31")  # the key, order-1
    page.check("#browse input[name=format][value=json]")
    page.wait_for_selector('#records pre >> text=/"qty": 2/')
    assert "source: console" in page.locator("#records tr[data-offset='0']").inner_text()
    page.screenshot(path=str(shots / "messages.png"))
    status, d = _get(cluster.nodes[3].http_port,  # from an offset
                     "/ui/api/topics/web-records/records?partition=0&mode=offset&offset=0")
    assert status == 200 and [x["offset"] for x in d["records"]] == [0], d
    status, d = _get(cluster.nodes[2].http_port,  # by time, through another node
                     "/ui/api/topics/web-records/records?partition=0&mode=timestamp&timestamp=0")
    assert status == 200 and [x["offset"] for x in d["records"]] == [0], d
    r = _tool("consume", "-b", cluster.bootstrap, "-t", "web-records", "--partition", "0",
              "--offset", "0", "--format", "json", "--max-messages", "1")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout.splitlines()[0])
    assert (rec["key"], json.loads(rec["value"]), rec["headers"]) == (
        "order-1", {"item": "tea", "qty": 2}, [["source", "console"]])


def test_group_lag_rises_while_stopped_and_reset_brings_it_down(
        cluster: ProcessCluster, page: Page, shots: Path) -> None:
    port = cluster.nodes[1].http_port
    status, _ = _send(port, "POST", "/ui/api/topics",
                      b'{"name": "web-lag", "partitions": 2, "replicationFactor": 3}')
    assert status in (201, 409)
    _produce(cluster, "web-lag", 20)
    r = _tool("consume", "-b", cluster.bootstrap, "-t", "web-lag", "--group", "web-g",
              "--from-beginning", "--max-messages", "20", timeout=60)
    assert r.returncode == 0, r.stderr
    goto(page, cluster, "groups/web-g")
    page.wait_for_selector("#total-lag >> text=total lag 0")
    _produce(cluster, "web-lag", 30)  # the group is stopped: its lag rises
    page.wait_for_selector("#total-lag >> text=total lag 30")
    # the node's sampler (every 5 s) records the same lag for the graph
    wait_until(lambda: [g["lag"] for g in _get(port, "/ui/api/groups")[1]["groups"]
                        if g["id"] == "web-g"] == [30], 20, "a sampled lag of 30",
               interval_s=0.5)
    _, d = _get(port, "/ui/api/groups/web-g")
    assert [30] == [lag for _, lag in d["lagHistory"]][-1:]
    assert page.locator("canvas[aria-label='Total lag of web-g']").count() == 1
    page.screenshot(path=str(shots / "group.png"))
    # it resumes: the lag falls, and the page shows the member and its partitions
    code = "import sys; from dmq.cli.tools import consume_main; consume_main(sys.argv[1:])"
    consumer = subprocess.Popen(
        [sys.executable, "-c", code, "-b", cluster.bootstrap, "-t", "web-lag", "--group",
         "web-g", "--max-messages", "31", "--timeout-ms", "30000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        page.wait_for_selector("table[aria-label='Members'] td >> text=web-lag-0, web-lag-1")
        assert page.locator("table[aria-label='Members'] tbody tr").count() == 1
        _produce(cluster, "web-lag", 1)  # its last record: it commits and leaves
        _, err = consumer.communicate(timeout=30)
        assert consumer.returncode == 0, err
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
    page.wait_for_selector("#total-lag >> text=total lag 0")
    page.wait_for_selector("table[aria-label='Members'] >> text=No members")
    _produce(cluster, "web-lag", 4)
    page.wait_for_selector("#total-lag >> text=total lag 4")
    page.select_option("#reset-offsets select[name=to]", "latest")
    page.click("#reset-offsets button[type=submit]")
    page.wait_for_selector(".msg.done >> text=Reset:")
    page.wait_for_selector("#total-lag >> text=total lag 0")
    # the other targets of a reset, through the same path (55 records in 2 partitions)
    for to, value in [("earliest", None), ("offset", 1_000_000), ("timestamp", 0),
                      ("offset", "3")]:
        status, d = _send(port, "POST", "/ui/api/groups/web-g/reset",
                          json.dumps({"topic": "web-lag", "to": to, "value": value}).encode())
        assert status == 200, d
        offsets = [o["offset"] for o in d["offsets"]]
        assert len(offsets) == 2 and all(0 <= o <= (3 if value == "3" else 55)
                                         for o in offsets), (to, d)
        if value != "3":  # clamped to the log end, or the log start (0)
            assert sum(offsets) == (55 if value == 1_000_000 else 0), (to, d)
        assert _get(port, "/ui/api/groups/web-g")[1]["totalLag"] == 55 - sum(offsets)
    goto(page, cluster, "groups")
    page.wait_for_selector("tr[data-group='web-g']")


def _produce(cluster: ProcessCluster, topic: str, n: int) -> None:
    code = ("import sys; from dmq.cli.tools import produce_main; produce_main(sys.argv[1:])")
    r = subprocess.run([sys.executable, "-c", code, "-b", cluster.bootstrap, "-t", topic],
                       input="".join(f"v{i}\n" for i in range(n)), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_throughput_page_draws_rates_from_the_brokers(
        cluster: ProcessCluster, page: Page, shots: Path) -> None:
    port = cluster.nodes[1].http_port
    goto(page, cluster, "throughput")  # starts this node's sampler if it was not running
    def sampled() -> bool:  # produce and read until a sample has seen records in and out
        _produce(cluster, "web-lag", 200)
        for p in (0, 1):  # a consumer's fetch (the console's own browse)
            assert _get(port, f"/ui/api/topics/web-lag/records?partition={p}&count=200")[0] \
                == 200
        _, d = _get(port, "/ui/api/throughput")
        rates = d["topics"].get("web-lag", {})
        seen_in = [v for v in rates.get("recordsIn", []) if v]
        seen_out = [v for v in rates.get("recordsOut", []) if v]
        # (pictures for the README wait for a few points of a line)
        return min(len(seen_in), len(seen_out)) >= (
            4 if os.environ.get("DMQ_CONSOLE_SHOTS") else 1)

    # 200 records a try, a second apart: the producing and reading is the workload, the
    # sampled rate its effect
    wait_until(sampled, 45, "rates in and out sampled", interval_s=1)
    _, d = _get(port, "/ui/api/throughput")
    assert any(v for b in d["brokers"].values() for v in b["recordsOut"]), d["brokers"]
    goto(page, cluster, "throughput")
    page.wait_for_selector("canvas[aria-label='Records/s out per topic']")
    assert page.locator("canvas").count() == 8
    page.screenshot(path=str(shots / "throughput.png"), full_page=True)
    _, d = _get(port, "/ui/api/topics")
    (row,) = [t for t in d["topics"] if t["name"] == "web-lag"]
    assert {"recordsInPerSec", "bytesInPerSec", "recordsOutPerSec",
            "bytesOutPerSec"} <= set(row), row
    goto(page, cluster, "topics")
    page.wait_for_selector("tr[data-topic='web-lag']")
    page.wait_for_selector("th >> text=Records/s out")
    page.screenshot(path=str(shots / "topics-rates.png"))


def test_bad_input_gets_a_clear_message_never_a_500(
        cluster: ProcessCluster, page: Page) -> None:
    goto(page, cluster, "topics")
    for name, parts, rf, expected in [
            ("", "3", "3", "topic name is required"),
            ("bad-parts", "-1", "3", "partitions must be in [1, 10000], got -1"),
            ("huge", "99999999999999999999", "3", "partitions must be in [1, 10000]"),
            ("bad-rf", "1", "", "replication factor is required"),
            ("bad name!", "1", "1", "topic name may hold only"),
            ("x" * 300, "1", "1", "at most 249")]:
        page.fill("#topic-name", name)
        page.fill("#topic-partitions", parts)
        page.fill("#topic-rf", rf)
        page.click("#create-topic button[type=submit]")
        alert = page.wait_for_selector(".msg.error[role=alert]")
        assert alert is not None and expected in alert.inner_text(), alert.inner_text()
    port = cluster.nodes[1].http_port
    for method, path, body in [
            ("POST", "/ui/api/topics", b"not json"),
            ("POST", "/ui/api/topics", b'{"name": "z", "partitions": 1e400}'),
            ("POST", "/ui/api/topics", b'{"name": "z", "partitions": 1, '
                                       b'"replicationFactor": 1, "configs": {"a": ""}}'),
            ("POST", "/ui/api/topics/no-such-topic/records", b'{"value": "v"}'),
            ("POST", "/ui/api/topics/web-records/records", b'{"value": "v", "partition": 7}'),
            ("POST", "/ui/api/topics/web-records/partitions", b'{"count": -2}'),
            ("POST", "/ui/api/groups/nobody/reset", b'{"topic": "web-records", "to": "soon"}'),
            ("DELETE", "/ui/api/topics/web-records", b""),
            ("GET", "/ui/api/topics/web-records/records?partition=-1", None),
            ("GET", "/ui/api/topics/web-records/records?mode=offset&offset=abc", None)]:
        status, d = _send(port, method, path, body) if body is not None else _get(port, path)
        assert 400 <= status < 500, (path, status, d)
        assert d["error"] and "Traceback" not in d["error"], d
    goto(page, cluster, "messages?topic=web-records&partition=0")
    page.fill("#produce-partition", "-4")
    page.fill("#produce-value", "x")
    page.click("#produce button[type=submit]")
    alert = page.wait_for_selector("#produce + div .msg.error")
    assert alert is not None and "partition must be in [0," in alert.inner_text()


def test_keyboard_navigation_dark_theme_and_phone_width(
        cluster: ProcessCluster, page: Page, shots: Path) -> None:
    goto(page, cluster, "cluster")
    page.wait_for_selector("tr[data-broker='103'][data-state='ONLINE']")
    page.screenshot(path=str(shots / "cluster.png"))  # with the topics of the tests before
    page.keyboard.press("Tab")  # the skip link first
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")  # Cluster, then Topics
    assert page.evaluate("document.activeElement.textContent") == "Topics"
    page.keyboard.press("Enter")
    page.wait_for_selector("body[data-page='topics']")
    page.emulate_media(color_scheme="dark")
    page.set_viewport_size({"width": 390, "height": 800})
    goto(page, cluster, "cluster")
    page.wait_for_selector("tr[data-broker]")
    bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg == "rgb(13, 17, 23)", bg
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width}px wide at a 390px viewport"
    page.screenshot(path=str(shots / "cluster-phone-dark.png"), full_page=False)
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 1280, "height": 800})


def test_a_killed_broker_turns_red_within_the_session_timeout(
        cluster: ProcessCluster, page: Page, shots: Path) -> None:
    # one replica per partition, spread over the brokers: 103's go offline with it
    status, _ = _send(cluster.nodes[1].http_port, "POST", "/ui/api/topics",
                      b'{"name": "web-solo", "partitions": 3, "replicationFactor": 1}')
    assert status == 201
    goto(page, cluster, "cluster")
    page.wait_for_selector("tr[data-broker='103'][data-state='ONLINE']")
    cluster.kill(103)
    # the page polls every 2 s; the controller fences after the session timeout
    page.wait_for_selector("tr.bad[data-broker='103']:not([data-state='ONLINE'])",
                           timeout=SESSION_TIMEOUT_MS + 4000)
    assert "offline" in page.locator("tr[data-broker='103']").inner_text()
    page.wait_for_selector("table[aria-label='Partitions needing attention'] tr.warn")
    page.wait_for_selector(
        "table[aria-label='Partitions needing attention'] tr.bad >> text=offline")
    rows = page.locator("table[aria-label='Partitions needing attention'] tr.bad")
    assert all(t.startswith("web-solo-") for t in rows.all_inner_texts()), \
        rows.all_inner_texts()
    page.screenshot(path=str(shots / "cluster-broker-down.png"))
