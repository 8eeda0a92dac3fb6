"""The test Hub server (tests/hub_server.py) driven by the real huggingface_hub and transformers clients.

`HF_ENDPOINT` is read when huggingface_hub is imported, so every client runs in a subprocess whose environment
points at the server; the server itself runs in the test process, where faults are injected and requests read.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from hub_server import HubServer
from safetensors.torch import save_file

TOKENS = {"hf_writer": "alice", "hf_reader": "bob"}

PRELUDE = """\
import hashlib, json, pathlib, sys
from huggingface_hub import HfApi, hf_hub_download, snapshot_download

FOLDER, WORK = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
api, bob, anon = HfApi(token="hf_writer"), HfApi(token="hf_reader"), HfApi(token=False)
out = {}

def digest(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()

def failure(fn, *args, **kwargs):
    \"\"\"(exception class name, HTTP status) of a call that must fail.\"\"\"
    try:
        fn(*args, **kwargs)
    except Exception as e:
        response = getattr(e, "response", None)
        return [type(e).__name__, response.status_code if response is not None else None]
    raise AssertionError(f"{fn.__name__} did not fail")

def snapshot(path):
    root = pathlib.Path(path)
    return {p.relative_to(root).as_posix(): digest(p) for p in sorted(root.rglob("*")) if p.is_file()}
"""


def run_client(server: HubServer, tmp_path: Path, code: str, *, xet: bool = False, folder: Path | None = None,
               name: str = "client") -> dict:
    """Run `code` (after PRELUDE) in a fresh interpreter pointed at `server`; return its `out` dict."""
    work = tmp_path / name
    work.mkdir()
    script = work / "client.py"
    script.write_text(PRELUDE + textwrap.dedent(code) + "\nprint(json.dumps(out))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=server.url, HF_HOME=str(work / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    if not xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    proc = subprocess.run([sys.executable, str(script), str(folder or work), str(work)], env=env, cwd=work,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"client failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A model-like folder: a small safetensors file, a config and a nested text file."""
    root = tmp_path / "folder"
    (root / "notes").mkdir(parents=True)
    weight = torch.arange(2048, dtype=torch.float32).reshape(32, 64)
    save_file({"weight": weight}, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({"hidden_size": 64}))
    (root / "notes" / "readme.txt").write_text("tiny test model\n")
    return root


def call(url: str, method: str = "GET", data: bytes | None = None, token: str | None = None,
         headers: dict | None = None, timeout: float = 10) -> tuple[int, dict, bytes]:
    """A raw HTTP call: (status, headers, body), errors included."""
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_protocol_details_over_raw_http() -> None:
    """Status codes and headers the client relies on, checked without the client."""
    with HubServer(TOKENS) as server:
        base = server.url
        status, headers, body = call(f"{base}/api/whoami-v2", token="hf_nope")
        assert status == 401 and headers["X-Error-Message"] == "Invalid credentials in Authorization header"
        assert json.loads(body)["error"] and headers["Content-Length"] == str(len(body))
        assert call(f"{base}/api/repos/create", "POST", b'{"name": "r"}')[0] == 401
        status, _, body = call(f"{base}/api/repos/create", "POST", b'{"name": "r"}', "hf_writer")
        assert status == 200 and json.loads(body)["url"] == f"{base}/alice/r"
        status, _, body = call(f"{base}/api/repos/create", "POST", b'{"name": "r"}', "hf_writer")
        assert status == 409 and json.loads(body)["url"] == f"{base}/alice/r"

        lines = [{"key": "header", "value": {"summary": "add"}},
                 {"key": "file",
                  "value": {"path": "a/b.txt", "content": "aGVsbG8gd29ybGQ=", "encoding": "base64"}}]
        ndjson = b"\n".join(json.dumps(line).encode() for line in lines)
        status, _, body = call(f"{base}/api/models/alice/r/commit/main", "POST", ndjson, "hf_writer")
        commit = json.loads(body)["commitOid"]
        assert status == 200 and len(commit) == 40 and commit == commit.lower()
        same = json.loads(call(f"{base}/api/models/alice/r/commit/main", "POST", ndjson, "hf_writer")[2])
        assert same["commitOid"] == commit  # nothing changed: no new commit

        status, headers, body = call(f"{base}/alice/r/resolve/main/a/b.txt", headers={"Range": "bytes=6-"})
        assert (status, body, headers["Content-Range"]) == (206, b"world", "bytes 6-10/11")
        assert headers["ETag"] == '"95d09f2b10159347eece71399a7e2e907ea3df4f"'  # git sha1 of "hello world"
        assert headers["X-Repo-Commit"] == commit and not any(h.lower().startswith("x-xet") for h in headers)
        status, headers, _ = call(f"{base}/alice/r/resolve/main/missing.txt", "HEAD")
        assert (status, headers["X-Error-Code"], headers["X-Repo-Commit"]) == (404, "EntryNotFound", commit)
        assert call(f"{base}/alice/r/resolve/nobranch/a/b.txt")[1]["X-Error-Code"] == "RevisionNotFound"
        assert call(f"{base}/alice/none/resolve/main/a/b.txt")[1]["X-Error-Code"] == "RepoNotFound"
        assert call(f"{base}/api/models/alice/r/tree/main/nope")[1]["X-Error-Code"] == "EntryNotFound"
        status, _, body = call(f"{base}/api/models/alice/r/paths-info/main", "POST",
                               b"paths=a&paths=zz&paths=a%2Fb.txt",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert [(e["type"], e["path"]) for e in json.loads(body)] == [("directory", "a"), ("file", "a/b.txt")]

        server.inject("GET", r"/api/models/alice/r$", status=None, delay=0.6)
        with pytest.raises(OSError):  # a timeout, then the server answers normally again
            call(f"{base}/api/models/alice/r", timeout=0.2)
        server.inject("*", r"/api/models/alice/r$", status=503, times=2)
        assert [call(f"{base}/api/models/alice/r")[0] for _ in range(3)] == [503, 503, 200]
        server.inject("GET", r"/api/models/alice/r$", status=500)
        server.clear_faults()
        assert call(f"{base}/api/models/alice/r")[0] == 200
        assert ("GET", "/api/models/alice/r", False) in server.requests


def test_huggingface_hub_lfs_path(tmp_path: Path, folder: Path) -> None:
    """HF_HUB_DISABLE_XET=1: safetensors through the LFS batch API, downloads, branches, auth, faults."""
    with HubServer(TOKENS) as server:
        server.inject("POST", r"^/api/models/alice/flaky/commit/", status=500)
        server.inject("GET", r"^/alice/tiny/resolve/main/model\.safetensors$", status=None, cut_after=3000)
        out = run_client(server, tmp_path, """
            out["whoami"] = api.whoami()["name"]
            out["bad_whoami"] = failure(HfApi(token="hf_bad").whoami)
            out["url"] = str(api.create_repo("alice/tiny"))
            out["conflict"] = failure(api.create_repo, "alice/tiny")
            api.create_repo("alice/tiny", exist_ok=True)
            first = api.upload_folder(repo_id="alice/tiny", folder_path=FOLDER, commit_message="add model")
            out["files"] = api.list_repo_files("alice/tiny")
            out["lfs"] = {f.path: f.lfs is not None for f in api.list_repo_tree("alice/tiny", recursive=True)
                          if hasattr(f, "lfs")}
            out["missing_folder"] = failure(lambda: list(api.list_repo_tree("alice/tiny", "nope")))
            out["resumed"] = digest(hf_hub_download("alice/tiny", "model.safetensors", cache_dir=WORK / "c1"))
            snap = snapshot_download("alice/tiny", cache_dir=WORK / "c2")
            out["snapshot"], out["snapshot_commit"] = snapshot(snap), pathlib.Path(snap).name

            commits = len(api.list_repo_commits("alice/tiny"))
            again = api.upload_folder(repo_id="alice/tiny", folder_path=FOLDER, commit_message="again")
            out["repush"] = [first.oid, again.oid, commits, len(api.list_repo_commits("alice/tiny"))]

            api.create_branch("alice/tiny", branch="dev")
            out["branch_conflict"] = failure(api.create_branch, "alice/tiny", branch="dev")
            api.upload_file(path_or_fileobj=b"dev only\\n", path_in_repo="dev.txt", repo_id="alice/tiny",
                            revision="dev")
            api.create_tag("alice/tiny", tag="v1", revision="dev")
            out["dev"] = pathlib.Path(hf_hub_download("alice/tiny", "dev.txt", revision="dev",
                                                      cache_dir=WORK / "c3")).read_text()
            out["tag"] = pathlib.Path(hf_hub_download("alice/tiny", "dev.txt", revision="v1",
                                                      cache_dir=WORK / "c3")).read_text()
            out["dev_on_main"] = failure(hf_hub_download, "alice/tiny", "dev.txt", cache_dir=WORK / "c3")
            api.delete_file("dev.txt", repo_id="alice/tiny", revision="dev")
            api.delete_folder("notes", repo_id="alice/tiny", revision="dev")
            out["dev_after_delete"] = sorted(api.list_repo_files("alice/tiny", revision="dev"))
            pr = api.upload_file(path_or_fileobj=b"pr\\n", path_in_repo="pr.txt", repo_id="alice/tiny",
                                 create_pr=True)
            pr_file = hf_hub_download("alice/tiny", "pr.txt", revision=pr.pr_revision, cache_dir=WORK / "c3")
            out["pr"] = [pr.pr_revision, pathlib.Path(pr_file).read_text()]
            initial = api.list_repo_commits("alice/tiny")[-1].commit_id
            out["stale_parent"] = failure(api.upload_file, path_or_fileobj=b"late", path_in_repo="late.txt",
                                          repo_id="alice/tiny", parent_commit=initial)
            refs = api.list_repo_refs("alice/tiny")
            out["refs"] = [sorted(b.name for b in refs.branches), [t.name for t in refs.tags]]

            api.create_repo("alice/secret", private=True)
            api.upload_file(path_or_fileobj=b"s3cret", path_in_repo="s.txt", repo_id="alice/secret")
            out["private_anon"] = failure(hf_hub_download, "alice/secret", "s.txt", cache_dir=WORK / "c4",
                                          token=False)
            out["private_info_anon"] = failure(anon.repo_info, "alice/secret")
            out["private_bob"] = failure(bob.repo_info, "alice/secret")
            owned = hf_hub_download("alice/secret", "s.txt", cache_dir=WORK / "c4", token="hf_writer")
            out["private_owner"] = pathlib.Path(owned).read_text()
            out["bob_writes"] = failure(bob.upload_file, path_or_fileobj=b"x", path_in_repo="x.txt",
                                        repo_id="alice/tiny")
            out["bob_creates"] = failure(bob.create_repo, "alice/bobs")
            out["anon_writes"] = failure(anon.upload_file, path_or_fileobj=b"x", path_in_repo="x.txt",
                                         repo_id="alice/tiny")

            api.create_repo("alice/flaky")
            upload = dict(path_or_fileobj=b"flaky\\n", path_in_repo="x.txt", repo_id="alice/flaky")
            out["flaky_first"] = failure(api.upload_file, **upload)
            api.upload_file(**upload)
            out["flaky_files"] = api.list_repo_files("alice/flaky")
        """, folder=folder)
        requests = list(server.requests)

    local = {p.relative_to(folder).as_posix(): sha256(p) for p in folder.rglob("*") if p.is_file()}
    assert out["whoami"] == "alice" and out["bad_whoami"] == ["HfHubHTTPError", 401]
    assert out["url"] == f"{server.url}/alice/tiny" and out["conflict"] == ["HfHubHTTPError", 409]
    assert sorted(out["files"]) == sorted([".gitattributes", *local])
    assert out["lfs"] == {".gitattributes": False, "config.json": False, "model.safetensors": True,
                          "notes/readme.txt": False}
    assert out["missing_folder"] == ["RemoteEntryNotFoundError", 404]
    assert out["resumed"] == local["model.safetensors"]
    # The dropped download was retried (a small file is fetched again whole: the client only sends `Range`
    # once a full 10 MB chunk had arrived) and the file is intact.
    assert requests.count(("GET", "/alice/tiny/resolve/main/model.safetensors", False)) == 2
    assert {k: v for k, v in out["snapshot"].items() if k != ".gitattributes"} == local
    first, again, commits_before, commits_after = out["repush"]
    assert first == again == out["snapshot_commit"] and commits_before == commits_after == 2
    assert out["branch_conflict"] == ["HfHubHTTPError", 409]
    assert out["dev"] == out["tag"] == "dev only\n" and out["dev_on_main"][0] == "RemoteEntryNotFoundError"
    assert out["dev_after_delete"] == [".gitattributes", "config.json", "model.safetensors"]
    assert out["pr"] == ["refs/pr/1", "pr\n"] and out["stale_parent"] == ["HfHubHTTPError", 412]
    assert out["refs"] == [["dev", "main"], ["v1"]]
    for key in ("private_anon", "private_info_anon", "private_bob"):
        assert out[key] == ["RepositoryNotFoundError", 404], key
    assert out["private_owner"] == "s3cret"
    assert out["bob_writes"] == out["bob_creates"] == ["HfHubHTTPError", 403]
    assert out["anon_writes"][1] == 401
    assert out["flaky_first"] == ["HfHubHTTPError", 500] and "x.txt" in out["flaky_files"]

    lfs_puts = [r for r in requests if r[0] == "PUT"]
    assert len(lfs_puts) == 1 and lfs_puts[0][1].startswith("/_lfs/") and lfs_puts[0][2] is False
    assert any(r[1] == "/alice/tiny.git/info/lfs/objects/batch" for r in requests)
    commit_posts = [r for r in requests if r[0] == "POST" and "/commit/" in r[1]]
    # push, (no-op re-push: no commit call), dev upload, delete file, delete folder, PR, stale parent
    assert [r[1].rsplit("/", 1)[1] for r in commit_posts if r[1].startswith("/api/models/alice/tiny/")] == [
        "main", "dev", "dev", "dev", "main", "main"]
    assert len([r for r in commit_posts if r[1].startswith("/api/models/alice/flaky/")]) == 2
    assert not any("xet" in r[1] for r in requests)


def test_huggingface_hub_default_xet_client_with_regular_uploads(tmp_path: Path, folder: Path) -> None:
    """hf_xet importable (the default): `all_regular=True` keeps every file out of xet; upload_folder then
    runs the pipelined uploader, which retries a failed commit POST by itself."""
    pytest.importorskip("hf_xet")
    with HubServer(TOKENS, all_regular=True) as server:
        server.inject("POST", r"^/api/datasets/alice/data/commit/", status=500)
        out = run_client(server, tmp_path, """
            api.create_repo("alice/data", repo_type="dataset")
            first = api.upload_folder(repo_id="alice/data", repo_type="dataset", folder_path=FOLDER)
            again = api.upload_folder(repo_id="alice/data", repo_type="dataset", folder_path=FOLDER)
            out["oids"] = [first.oid, again.oid]
            out["commits"] = len(api.list_repo_commits("alice/data", repo_type="dataset"))
            out["info"] = [(s.rfilename, s.size, s.lfs is None) for s in
                           api.dataset_info("alice/data", files_metadata=True).siblings]
            snap = snapshot_download("alice/data", repo_type="dataset", cache_dir=WORK / "c")
            out["snapshot"] = snapshot(snap)
        """, xet=True, folder=folder)
        requests = list(server.requests)
        stored = server.get_file("alice/data", "model.safetensors", repo_type="dataset")

    assert stored == (folder / "model.safetensors").read_bytes()
    assert out["oids"][0] == out["oids"][1] and out["commits"] == 2
    assert all(regular for _, _, regular in out["info"])
    local = {p.relative_to(folder).as_posix(): sha256(p) for p in folder.rglob("*") if p.is_file()}
    assert {k: v for k, v in out["snapshot"].items() if k != ".gitattributes"} == local
    assert [r[1] for r in requests if "/commit/" in r[1]] == ["/api/datasets/alice/data/commit/main"] * 2
    assert not any("xet" in r[1] or "/info/lfs/" in r[1] for r in requests)


@pytest.mark.slow  # keeps the default suite under 15 minutes (it measured 15 min 57 s)
def test_transformers_push_to_hub_and_from_pretrained(tmp_path: Path) -> None:
    """A tiny GPT-2 pushed with push_to_hub comes back equal with from_pretrained in a fresh process."""
    with HubServer(TOKENS) as server:
        pushed = run_client(server, tmp_path, """
            import torch
            from transformers import GPT2Config, GPT2LMHeadModel
            from safetensors.torch import save_file
            torch.manual_seed(0)
            config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16)
            model = GPT2LMHeadModel(config)
            model.push_to_hub("alice/tiny-gpt2", token="hf_writer")
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # untied copies
            save_file(state, str(WORK / "expected.safetensors"))
            out["files"] = api.list_repo_files("alice/tiny-gpt2")
            out["expected"] = str(WORK / "expected.safetensors")
        """, name="push")
        loaded = run_client(server, tmp_path, f"""
            import torch
            from transformers import AutoModelForCausalLM
            from safetensors.torch import load_file
            model = AutoModelForCausalLM.from_pretrained("alice/tiny-gpt2")
            expected = load_file({pushed["expected"]!r})
            state = model.state_dict()
            out["missing"] = sorted(set(expected) ^ set(state))
            out["unequal"] = [k for k in expected if not torch.equal(expected[k], state[k])]
        """, name="load")
        requests = list(server.requests)
    assert "model.safetensors" in pushed["files"] and "config.json" in pushed["files"]
    assert any(r[0] == "PUT" and r[1].startswith("/_lfs/") for r in requests)  # weights went through LFS
    assert loaded["missing"] == [] and loaded["unequal"] == []


def test_standalone_server_process() -> None:
    """`python tests/hub_server.py` prints its URL first, serves, and never echoes tokens."""
    script = Path(__file__).with_name("hub_server.py")
    proc = subprocess.Popen([sys.executable, str(script), "--port", "0", "--token", "hf_writer=alice"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        status, _, body = call(f"{url}/api/whoami-v2", token="hf_writer")
        assert status == 200 and json.loads(body)["name"] == "alice"
        assert call(f"{url}/api/whoami-v2", token="hf_other")[0] == 401
    finally:
        proc.terminate()
        rest, errors = proc.communicate(timeout=10)
    assert "hf_writer" not in rest + errors and "hf_other" not in rest + errors
