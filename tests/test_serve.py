"""`llmkit serve`: the real server process on 127.0.0.1, driven by the `openai` SDK and by raw HTTP.

Three tiny runs trained here (a char-level text run, a LoRA adapter run on it, an instruction-tuned run with a chat
template) are each served by `llmkit serve` in its own process; the tests check what a client of the OpenAI API
gets (streamed and whole answers, the model list), that greedy answers equal `llmkit generate --greedy`, that
every bad request is a 4xx with an OpenAI-style error and the server answers normally after it, that concurrent
clients each get their own answer, and the refusals before start and the exits on signals.
"""

from __future__ import annotations

import json
import pathlib
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import chromium, llmkit_cmd, subprocess_env, train_run

openai = pytest.importorskip("openai", reason='llmkit serve needs its extra: pip install "llmkit[serve]"')

TINY = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.n_positions=64", "training.report_to=none",
        "training.disable_tqdm=true", "sample.max_new_tokens=0", "training.learning_rate=3e-3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare_head):
    root = tmp_path_factory.mktemp("serve-runs")
    corpus, cache = shakespeare_head(60_000), f"data.cache_dir={root / 'cache'}"
    train_run(root / "text", [*TINY, "tokenizer.kind=char", f"data.source={corpus}", cache, "training.max_steps=60"])
    train_run(root / "adapter", [*[t for t in TINY if not t.startswith("model.")],
                                 f"model.from_pretrained={root / 'text'}", f"data.source={corpus}", cache, "lora.r=4",
                                 "training.max_steps=10"])
    train_run(root / "instruct", [*TINY, "model.n_positions=128", "tokenizer.kind=bpe", "tokenizer.vocab_size=400",
                                  "data.format=instruct", "data.source=builtin-instruct", cache, "training.max_steps=60"])
    return {name: root / name for name in ("text", "adapter", "instruct")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`llmkit serve` as a process; `stop()` sends a signal and returns the exit code."""

    def __init__(self, *args, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(llmkit_cmd("serve", *args, "--port", self.port, "--device", "cpu"),
                                     env={**subprocess_env(), **(env or {})}, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, self.proc.communicate()[1][-3000:]
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "the server did not answer /health within 120 s"
            time.sleep(0.2)

    def client(self, key: str = "unused"):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120)

    def post(self, path: str, body, headers: dict | None = None) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method="POST",
                                         headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def stop(self, sig=signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        try:
            _, stderr = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return self.proc.returncode, stderr


@pytest.fixture(scope="module")
def servers(runs):
    started = {name: Server(str(path)) for name, path in runs.items()}
    yield started
    for name, server in started.items():
        code, stderr = server.stop(signal.SIGTERM)
        assert code == 0, (name, stderr[-3000:])
        assert "Traceback" not in stderr and "Warning" not in stderr, (name, stderr[-3000:])  # the model process too


def generate_greedy(run, prompt: str, n: int, chat: bool = False) -> str:
    proc = subprocess.run(llmkit_cmd("generate", run, "--greedy", "--prompt", prompt, "--max-new-tokens", n, "--json",
                                     "--device", "cpu", *(["--chat"] if chat else [])),
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["samples"][0]


# --- what an OpenAI client gets --------------------------------------------------------------------------------


@pytest.mark.parametrize("run", ["text", "adapter"])
def test_completions_streamed_and_whole_through_the_openai_sdk(servers, runs, run):
    server = servers[run]
    client = server.client()
    (listed,) = client.models.list().data
    assert listed.id == str(runs[run])
    whole = client.completions.create(model=listed.id, prompt="ROMEO:", max_tokens=12, temperature=0)
    text = whole.choices[0].text
    assert len(text) > 0 and whole.usage.completion_tokens == 12 and whole.choices[0].finish_reason == "length"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=listed.id, prompt="ROMEO:", max_tokens=12, temperature=0, stream=True) if c.choices)
    assert streamed == text
    # greedy: what `llmkit generate --greedy` gives for the same prompt
    assert text == generate_greedy(runs[run], "ROMEO:", 12)


def test_chat_streamed_and_whole_from_an_instruct_run_equal_generate_chat(servers, runs):
    client = servers["instruct"].client()
    messages = [{"role": "user", "content": "What does os.path.join do?"}]
    whole = client.chat.completions.create(model=str(runs["instruct"]), messages=messages, max_tokens=30,
                                           temperature=0)
    answer = whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant" and answer
    assert "<|" not in answer  # the template's markers and the end of turn are not text
    chunks = list(client.chat.completions.create(model=str(runs["instruct"]), messages=messages, max_tokens=30,
                                                 temperature=0, stream=True))
    assert len(chunks) > 2  # tokens arrive as they are made
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert answer == generate_greedy(runs["instruct"], "What does os.path.join do?", 30, chat=True)


def test_concurrent_streaming_clients_each_get_the_answer_they_get_alone(servers, runs):
    client = servers["text"].client()
    prompts = ["ROMEO:", "JULIET:", "First Citizen:", "KING:", "O", "What", "MENENIUS:", "Be"]
    alone = {p: client.completions.create(model=str(runs["text"]), prompt=p, max_tokens=20, temperature=0)
             .choices[0].text for p in prompts}
    got: dict[str, str] = {}

    def ask(prompt: str) -> None:
        stream = servers["text"].client().completions.create(model=str(runs["text"]), prompt=prompt, max_tokens=20,
                                                             temperature=0, stream=True)
        got[prompt] = "".join(c.choices[0].text for c in stream if c.choices)

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert got == alone


# --- faults: a 4xx each, and the server goes on ----------------------------------------------------------------


FAULTS = {
    "malformed JSON": ("/v1/completions", b'{"prompt": "x", ', 400, "not valid JSON"),
    "a field of the wrong type": ("/v1/completions", {"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens must be"),
    "a boolean where a number goes": ("/v1/completions", {"prompt": "x", "temperature": True}, 400, "temperature"),
    "an unknown model": ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "is not served here"),
    "max_tokens beyond the context": ("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 500}, 400,
                                      "may be at most 58"),
    "a prompt longer than the context": ("/v1/completions", {"prompt": "x" * 200}, 400, "context is 64 tokens"),
    "a chat request to a model without a chat template": ("/v1/chat/completions",
                                                          {"messages": [{"role": "user", "content": "hi"}]}, 400,
                                                          "no chat template"),
    "more than one choice": ("/v1/completions", {"prompt": "x", "n": 2}, 400, "n=2 is not supported"),
    "a prompt that is not text": ("/v1/completions", {"prompt": [1, 2]}, 400, "prompt must be a string"),
    "top_p out of range": ("/v1/completions", {"prompt": "x", "top_p": 3}, 400, "top_p must be in (0, 1]"),
    "a body that is not an object": ("/v1/completions", b"[1, 2]", 400, "not a JSON object"),
    "another model to load (one pinned model)": ("/load_model", {"model": "gpt2"}, 404, "Not Found"),
    "a reset, which would stop the model's process": ("/reset", {}, 404, "Not Found"),
}
CHAT_FAULTS = {
    "an empty message list": ({"messages": []}, "messages must be a non-empty list"),
    "a message without content": ({"messages": [{"role": "user"}]}, "messages[0] must be an object"),
    "a conversation longer than the context": ({"messages": [{"role": "user", "content": "word " * 400}]},
                                               "this model's context is 128 tokens"),
}


def _still_serves(server, runs, run="text"):
    status, answer = server.post("/v1/completions", {"model": str(runs[run]), "prompt": "ROMEO:", "max_tokens": 3})
    assert status == 200 and answer["choices"][0]["text"] is not None


@pytest.mark.parametrize("name", list(FAULTS))
def test_each_bad_request_is_a_4xx_with_an_openai_error_and_the_server_goes_on(servers, runs, name):
    path, body, status, message = FAULTS[name]
    got, answer = servers["text"].post(path, body)
    assert got == status, answer
    assert set(answer) == {"error"} and message in answer["error"]["message"], answer
    assert answer["error"]["type"] == "invalid_request_error" and "Traceback" not in json.dumps(answer)
    _still_serves(servers["text"], runs)


@pytest.mark.parametrize("name", list(CHAT_FAULTS))
def test_each_bad_chat_request_is_a_4xx_and_the_server_goes_on(servers, runs, name):
    body, message = CHAT_FAULTS[name]
    got, answer = servers["instruct"].post("/v1/chat/completions", body)
    assert got == 400 and message in answer["error"]["message"], answer
    _still_serves(servers["instruct"], runs, "instruct")


def test_a_client_that_leaves_mid_stream_does_not_stop_the_server(servers, runs):
    server = servers["text"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        body = json.dumps({"prompt": "ROMEO:", "max_tokens": 58, "stream": True}).encode()
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        received = b""
        while b"data: " not in received:  # the stream started; leave now
            chunk = conn.recv(4096)
            assert chunk, received
            received += chunk
    _still_serves(server, runs)
    assert server.proc.poll() is None


def test_an_api_key_is_required_when_set_and_sigint_stops_the_server_and_its_model_process_with_exit_0(runs):
    server = Server(str(runs["text"]), env={"LLMKIT_API_KEY": "sk-local-test"})
    model = model_process(server)
    try:
        with pytest.raises(openai.AuthenticationError):
            server.client("wrong").completions.create(model=str(runs["text"]), prompt="x", max_tokens=2)
        status, answer = server.post("/v1/completions", {"prompt": "x", "max_tokens": 2})
        assert status == 401 and answer["error"]["code"] == "invalid_api_key"
        ok = server.client("sk-local-test").completions.create(model=str(runs["text"]), prompt="x", max_tokens=2)
        assert ok.usage.completion_tokens == 2
    finally:
        code, stderr = server.stop(signal.SIGINT)
    assert code == 0, stderr[-3000:]
    assert "sk-local-test" not in stderr
    deadline = time.monotonic() + 10  # no orphan holding the model's memory (transformers' watcher, or our shutdown)
    while running(model):
        assert time.monotonic() < deadline, "the model's process outlived the server"
        time.sleep(0.1)


def model_process(server) -> int:
    """The pid of the process transformers runs the served model in: the server's child (not the resource tracker
    multiprocessing also starts)."""
    children = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
            cmdline = (stat.parent / "cmdline").read_text()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == server.proc.pid and "resource_tracker" not in cmdline:
            children.append(int(stat.parent.name))
    (child,) = children
    return child


def running(pid: int) -> bool:
    try:
        return "zombie" not in pathlib.Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_a_model_process_that_dies_stops_the_server_with_one_line_and_exit_1(runs):
    import os

    server = Server(str(runs["text"]))
    try:
        _still_serves(server, runs)
        os.kill(model_process(server), signal.SIGKILL)
        _, stderr = server.proc.communicate(timeout=60)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    assert server.proc.returncode == 1, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("serving "), lines  # nothing between the start and the end
    assert lines[1].startswith("llmkit: error: the model's process crashed (exit code -9)"), lines


# --- refused before anything starts --------------------------------------------------------------------------


def test_a_port_in_use_a_missing_model_and_a_bad_adapter_are_one_line_and_exit_2(runs, tmp_path):
    import shutil

    broken = shutil.copytree(runs["adapter"], tmp_path / "broken-adapter")
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = {
            "port in use": ([str(runs["text"]), "--port", port], f"port {port} on 127.0.0.1 is not free"),
            "missing model": ([str(tmp_path / "no_run"), "--port", free_port()], "no such folder"),
            "bad adapter": ([str(runs["text"]), "--adapter", str(broken), "--port", free_port()],
                            "does not load onto"),
        }
        for name, (args, message) in cases.items():
            proc = subprocess.run(llmkit_cmd("serve", *map(str, args), "--device", "cpu"), env=subprocess_env(),
                                  capture_output=True, text=True, timeout=120)
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            assert proc.returncode == 2, (name, proc.stderr[-3000:])
            assert len(lines) == 1 and message in lines[0], (name, lines)


# --- the chat page, in a real browser ----------------------------------------------------------------------------


@pytest.mark.slow  # a browser start: in the slow suite, which .ci/run runs after the default one
def test_the_chat_page_streams_an_answer_keeps_the_conversation_and_stops(servers, runs, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium()
    try:
        browser.get(servers["instruct"].url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: str(runs["instruct"]) in b.find_element(By.ID, "model").text)
        for name in ("temperature", "top_p", "max_tokens", "seed"):  # the sampling settings are shown
            assert browser.find_element(By.ID, name).is_displayed()
        browser.find_element(By.ID, "temperature").clear()
        browser.find_element(By.ID, "temperature").send_keys("0")
        browser.find_element(By.ID, "max_tokens").send_keys("40")  # the length generate_greedy is given below (and
        # room left in the 128-token context for the second turn, which sends this answer back)
        browser.find_element(By.ID, "input").send_keys("What does os.path.join do?")
        browser.find_element(By.ID, "send").click()
        answer = wait.until(lambda b: next((e for e in b.find_elements(By.CSS_SELECTOR, ".assistant")
                                            if e.get_attribute("data-state") == "done"), None))
        expected = generate_greedy(runs["instruct"], "What does os.path.join do?", 40, chat=True)
        assert answer.text.strip() == expected.strip() and answer.text.strip()
        browser.save_screenshot(str(tmp_path / "chat.png"))
        assert (tmp_path / "chat.png").stat().st_size > 5000
        # the conversation is kept: the second request sends both turns (to the context's end, its default)
        browser.find_element(By.ID, "max_tokens").clear()
        browser.find_element(By.ID, "input").send_keys("And os.path.split?")
        browser.find_element(By.ID, "send").click()
        wait.until(lambda b: len([e for e in b.find_elements(By.CSS_SELECTOR, ".assistant")
                                  if e.get_attribute("data-state") in ("done", "stopped")]) == 2)
        assert len(browser.find_elements(By.CSS_SELECTOR, ".user")) == 2
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        browser.quit()
    _still_serves(servers["instruct"], runs, "instruct")
