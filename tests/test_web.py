"""`nanoforge web` started as a real subprocess: the official `openai` client against its API (completion and
stream), bad requests answered with 4xx OpenAI-style errors, and headless Chromium chatting through the page."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO, missing_infrastructure, nanoforge

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, run_dir: Path, log_path: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nanoforge", "web", "--run-dir", str(run_dir), "--port", str(self.port), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nanoforge web exited {self.proc.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise AssertionError(f"nanoforge web did not answer /health in time:\n{log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(trained_tiny_run, tmp_path_factory):
    srv = Server(trained_tiny_run, tmp_path_factory.mktemp("web") / "web.log")
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log_path.read_text(), srv.log_path.read_text()


def test_openai_client_gets_a_completion_and_a_stream(server, trained_tiny_run):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    model_ids = [m.id for m in client.models.list()]
    assert model_ids == [f"{trained_tiny_run.name}-base"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]

    completion = client.chat.completions.create(model=model_ids[0], messages=messages, max_tokens=10,
                                                temperature=0)
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert 0 < completion.usage.completion_tokens <= 10
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens

    stream = client.chat.completions.create(model=model_ids[0], messages=messages, max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            finish = c.finish_reason or finish
    # Greedy: the stream says exactly what the one-shot answer said, piece by piece.
    assert "".join(pieces) == choice.message.content
    assert len(pieces) > 1 and finish == choice.finish_reason
    assert usage.completion_tokens == completion.usage.completion_tokens

    # OpenAI's `stop`: the text ends just before the first stop string, streaming or not.
    full = choice.message.content
    assert len(full) >= 4
    stop = full[len(full) // 2: len(full) // 2 + 2]
    cut = client.chat.completions.create(model=model_ids[0], messages=messages, max_tokens=10, temperature=0,
                                         stop=[stop, "never appears \x00"])
    assert cut.choices[0].message.content == full[: full.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed_cut = client.chat.completions.create(model=model_ids[0], messages=messages, max_tokens=10,
                                                  temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed_cut if c.choices) == full[: full.find(stop)]
    assert client.models.retrieve(model_ids[0]).id == model_ids[0]

    # Several samples in one request share one prefill; seeded sampling is reproducible through the API.
    def sampled():
        return client.chat.completions.create(model=model_ids[0], messages=messages, max_tokens=8, n=3,
                                              temperature=1.0, seed=7)
    first = sampled()
    assert len(first.choices) == 3
    assert [c.message.content for c in first.choices] == [c.message.content for c in sampled().choices]


def test_bad_requests_get_4xx_never_500(server):
    import openai
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    hi = [{"role": "user", "content": "hi"}]
    model_id = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model=model_id, messages=hi, max_tokens=10**6)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=hi)

    url = server.url + "/v1/chat/completions"
    bad_bodies = {
        "not json": b"{nope",
        "a list": b"[1, 2]",
        "no messages": json.dumps({"messages": []}).encode(),
        "messages not a list": json.dumps({"messages": "hi"}).encode(),
        "unknown role": json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode(),
        "content not text": json.dumps({"messages": [{"role": "user", "content": 42}]}).encode(),
        "ends with assistant": json.dumps({"messages": [{"role": "user", "content": "a"},
                                                        {"role": "assistant", "content": "b"}]}).encode(),
        "two users in a row": json.dumps({"messages": hi + hi}).encode(),
        "too many messages": json.dumps({"messages": (hi + [{"role": "assistant", "content": "b"}]) * 40 + hi}).encode(),
        "too many characters": json.dumps({"messages": [{"role": "user", "content": "x" * 40_000}]}).encode(),
        "temperature too high": json.dumps({"messages": hi, "temperature": 7}).encode(),
        "negative max_tokens": json.dumps({"messages": hi, "max_tokens": -1}).encode(),
        "top_p zero": json.dumps({"messages": hi, "top_p": 0}).encode(),
        "n with stream": json.dumps({"messages": hi, "n": 2, "stream": True}).encode(),
        "n too large": json.dumps({"messages": hi, "n": 50}).encode(),
        "five stop strings": json.dumps({"messages": hi, "stop": ["a", "b", "c", "d", "e"]}).encode(),
        "prompt too long": json.dumps({"messages": [{"role": "user", "content": "word " * 5000}]}).encode(),
    }
    for name, body in bad_bodies.items():
        r = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=60)
        assert 400 <= r.status_code < 500, f"{name}: {r.status_code} {r.text}"
        error = r.json()["error"]
        assert error["message"] and error["type"] == "invalid_request_error", name
    assert httpx.get(server.url + "/v1/nothing-here").status_code == 404
    assert httpx.delete(server.url + "/health").status_code == 405
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_client_leaving_mid_stream_frees_the_replica(server):
    """The CPU server has one replica: if a dropped stream kept it, the next request would wait forever."""
    url = server.url + "/v1/chat/completions"
    long_stream = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 1000,
                   "ignore_eos": True}
    with httpx.stream("POST", url, json=long_stream, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 4:
                break  # hang up after a few chunks
    r = httpx.post(url, json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0


def test_web_refuses_a_busy_port_and_a_missing_run(trained_tiny_run, server, tmp_path):
    busy = nanoforge("web", "--run-dir", str(trained_tiny_run), "--port", str(server.port), check=False, timeout=120)
    assert busy.returncode == 2 and "pick another --port" in busy.stderr and "Traceback" not in busy.stderr
    missing = nanoforge("web", "--run-dir", str(tmp_path / "nope"), check=False, timeout=120)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def chromium_browser(playwright, user_data_dir: Path):
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=CHROMIUM, headless=True,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        viewport={"width": 900, "height": 640})


def test_browser_chats_with_streamed_reply(server, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_infrastructure("playwright (pip install -e '.[dev]')")
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        missing_infrastructure(f"{CHROMIUM} (apt-get install -y chromium)")

    with sync_playwright() as p:
        context = chromium_browser(p, tmp_path / "profile")
        try:
            page = context.new_page()
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent.endsWith('-base')")
            # Count how many times the reply bubble's text changes: a streamed reply grows in several steps.
            page.evaluate("""() => {
                window.replyUpdates = 0;
                new MutationObserver(() => { window.replyUpdates++; })
                    .observe(document.getElementById('log'), {subtree: true, characterData: true, childList: true});
            }""")
            page.fill("#input", "Tell me about the history of Rome.")
            page.click("#send")
            page.wait_for_selector(".msg.assistant[data-done='true']", timeout=120_000)
            reply = page.text_content(".msg.assistant")
            assert reply and reply.strip()
            assert page.evaluate("window.replyUpdates") > 3
            assert page.text_content(".msg.user") == "Tell me about the history of Rome."
            assert page.locator(".msg.error").count() == 0
            page.screenshot(path=str(tmp_path / "web-ui.png"))

            page.click("#new")
            assert page.locator(".msg").count() == 0
            page.fill("#input", "Hello again")
            page.keyboard.press("Enter")
            page.wait_for_selector(".msg.assistant[data-done='true']", timeout=120_000)
            assert page.locator(".msg.user").count() == 1
        finally:
            context.close()
