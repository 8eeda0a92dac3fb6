"""Sharing on the Hugging Face Hub: push and pull runs, adapter runs, plain model folders and tokenizers.

Design choices:
- Everything goes through `huggingface_hub.HfApi`: the token (`--token`, else `HF_TOKEN` or `hf auth login`), the
  endpoint (`HF_ENDPOINT`), retries, the download cache and resumable downloads are the Hub client's own.
- A push is one commit of a staged copy of the folder, so the local folder is never touched and a failed push
  leaves nothing behind; pushing the same folder twice changes nothing (the client skips unchanged files and
  makes no empty commit), and files the new push does not have are removed in the same commit.
- What is pushed loads for people without llmkit: an llmkit-gpt run is pushed as its exact stock equivalent
  (`GPT2LMHeadModel` or `LlamaForCausalLM`) when one exists, else with its modeling code (`auto_map`, loaded with
  `trust_remote_code=True`); `--export` picks. Weights are safetensors only; checkpoints, and the optimizer
  states a resumed run needs (pickles), only when asked.
- The model card is `huggingface_hub.ModelCard` with `ModelCardData` metadata (library, pipeline tag, tags,
  license, base model, datasets, evaluation results as model-index), checked by the Hub's own validator
  before the commit, and a body built from the run folder: architecture, training settings, metrics, the loss
  curve, samples, how to load it with and without llmkit, and the command that reproduces it.
- A token never appears in anything llmkit prints, logs, saves or pushes: errors are reduced to one line without
  request headers, and a run's config is saved with `*_token` settings redacted.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import tempfile
from dataclasses import dataclass

from .errors import OneLineError, ParameterError, first_line

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "chat_template.jinja")
RUN_FILES = ("config.yaml", "metrics.json", "log_history.json", "loss_curve.png", "report.html", "samples.jsonl",
             "generation_config.json")
CHECKPOINT_FILES = ("*.safetensors", "*.json")  # weights and trainer state; optimizer states only when asked
OPTIMIZER_FILES = ("optimizer.pt", "scheduler.pt", "rng_state*.pth", "scaler.pt")
EXPORTS = ("auto", "gpt2", "llama", "code", "none")


def use_timeout() -> None:
    """The Hub client waits forever by default; llmkit's calls give up after LLMKIT_HUB_TIMEOUT seconds (60) of
    silence, so a stalled connection ends in one line instead of a hang."""
    from huggingface_hub import close_session, set_client_factory

    from .compat import hub_client_factory

    default_client_factory = hub_client_factory()

    seconds = float(os.environ.get("LLMKIT_HUB_TIMEOUT", "60"))

    def set_timeout(request) -> None:  # the client passes timeout=None per request; fill in the gaps
        given = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {k: given.get(k) or seconds for k in ("connect", "read", "write", "pool")}

    def factory():
        client = default_client_factory()
        hooks = client.event_hooks
        hooks["request"] = [*hooks.get("request", []), set_timeout]
        client.event_hooks = hooks
        return client

    set_client_factory(factory)
    close_session()  # the next call builds its client from the factory


def push_finished_run(cfg, out: pathlib.Path, log=print) -> None:
    """`training.push_to_hub: true`: the complete run folder pushed after `llmkit train` has written all of it, by
    the main process only."""
    from accelerate import PartialState

    from .training import hub_settings

    hub = hub_settings(cfg, str(out))
    if hub and PartialState().is_main_process:
        pushed = push(out, hub.pop("repo_id"), **hub)
        log(f"pushed {out} to {pushed.url} (commit {pushed.commit})")


class HubError(OneLineError):
    """A Hub call that failed: one line naming what and how to fix it. Exit code 2 when the input is at fault (a
    repo id, a token, a revision, a folder), 1 when the Hub or the network is (5xx, timeouts, unreachable)."""


@dataclass
class Pushed:
    url: str
    commit: str
    changed: bool
    files: int
    bytes: int


def folder_kind(path: pathlib.Path) -> str:
    """run | adapter | model | tokenizer, or a one-line error for a folder that is none of them."""
    if not path.is_dir():
        raise HubError(f"{path} is not a folder; push takes a run folder, an adapter run, a model or tokenizer folder")
    if (path / "adapter_config.json").is_file():
        if not (path / "adapter_model.safetensors").is_file():
            raise HubError(f"{path} has adapter_config.json but no adapter_model.safetensors; finish or redo the run")
        return "adapter"
    if (path / "config.json").is_file():
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            raise HubError(f"{path} has a config.json but no safetensors weights; only safetensors are pushed")
        return "run" if (path / "config.yaml").is_file() else "model"
    if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
        return "tokenizer"
    raise HubError(f"{path} is not a run, adapter run, model or tokenizer folder (no config.json, "
                   "adapter_config.json or tokenizer files); pass the folder `llmkit train` wrote")


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except Exception as err:  # noqa: BLE001 - HFValidationError and friends
        raise HubError(f"{repo_id!r} is not a valid repo id ({first_line(err)}); use NAME or USER/NAME") from None
    if repo_id.count("/") > 1:
        raise HubError(f"{repo_id!r} is not a valid repo id; use NAME or USER/NAME")


def stage(path: pathlib.Path, *, export: str = "auto", checkpoints: bool = False, optimizer_states: bool = False,
          base_model: str | None = None, repo_id: str | None = None, license: str | None = None) -> pathlib.Path:
    """A temporary folder holding exactly what a push of `path` uploads (the caller removes it)."""
    kind = folder_kind(path)
    if export not in EXPORTS:
        raise ParameterError("export", f" {export} is unknown; use one of {', '.join(EXPORTS)}")
    out = pathlib.Path(tempfile.mkdtemp(prefix="llmkit-push-"))
    try:
        for name in (*TOKENIZER_FILES, *RUN_FILES):
            if (path / name).is_file():
                shutil.copy2(path / name, out / name)
        exported = None
        if kind == "adapter":
            shutil.copy2(path / "adapter_model.safetensors", out / "adapter_model.safetensors")
            config = json.loads((path / "adapter_config.json").read_text())
            if base_model:
                config["base_model_name_or_path"] = base_model
            (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        elif kind in ("run", "model"):
            exported = _stage_model(path, out, export)
        if checkpoints:
            _stage_checkpoints(path, out, optimizer_states)
        card = model_card(path, out, kind=kind, exported=exported, repo_id=repo_id, license=license)
        card.save(out / "README.md")
        return out
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def _stage_model(path: pathlib.Path, out: pathlib.Path, export: str) -> str | None:
    """The model files of `path` into `out`, exported as asked: the architecture pushed, or None as it is."""
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") != "llmkit-gpt" or export == "none":
        for name in (*WEIGHT_FILES, "config.json"):
            if (path / name).is_file():
                shutil.copy2(path / name, out / name)
        for shard in path.glob("model-*.safetensors"):
            shutil.copy2(shard, out / shard.name)
        return None
    from .export import write_export
    from .loading import load_model

    model, _ = load_model(str(path), device="cpu")
    target = export
    if export == "auto":
        from .models.conversions import stock_target

        target = stock_target(model.config) or "code"
    write_export(model, out, target)
    return target


def _stage_checkpoints(path: pathlib.Path, out: pathlib.Path, optimizer_states: bool) -> None:
    patterns = CHECKPOINT_FILES + (OPTIMIZER_FILES if optimizer_states else ())
    for checkpoint in sorted(path.glob("checkpoint-*")):
        for pattern in patterns:
            for file in checkpoint.glob(pattern):
                if file.name == "training_args.bin":
                    continue  # a pickle of every training setting: never pushed
                target = out / checkpoint.name / file.name
                target.parent.mkdir(exist_ok=True)
                shutil.copy2(file, target)


def push(path: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool | None = None,
         revision: str | None = None, commit_message: str | None = None, export: str = "auto",
         checkpoints: bool = False, optimizer_states: bool = False, base_model: str | None = None,
         license: str | None = None) -> Pushed:
    """Push a folder to `repo_id` as one commit (see the module docstring); returns the URL and commit id."""
    from huggingface_hub import HfApi

    folder = pathlib.Path(path).expanduser()
    check_repo_id(repo_id)
    staged = stage(folder, export=export, checkpoints=checkpoints, optimizer_states=optimizer_states,
                   base_model=base_model, repo_id=repo_id, license=license)
    use_timeout()
    try:
        files = [p for p in staged.rglob("*") if p.is_file()]
        with hub_errors(repo_id, token, writing=True), _quiet_hub():
            api = HfApi(token=token)
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            repo = url.repo_id
            _validate_card(staged / "README.md", token)
            if revision and revision != "main":
                api.create_branch(repo, branch=revision, exist_ok=True)
            before = api.repo_info(repo, revision=revision).sha
            info = api.upload_folder(repo_id=repo, folder_path=staged, revision=revision,
                                     commit_message=commit_message or f"Upload {folder.name} with llmkit",
                                     delete_patterns="*")
        commit = info.oid
        return Pushed(url=str(url), commit=commit, changed=commit != before, files=len(files),
                      bytes=sum(p.stat().st_size for p in files))
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _validate_card(readme: pathlib.Path, token: str | None) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(readme)
    try:
        card.validate()
    except ValueError as err:
        raise HubError(f"the model card's metadata was refused by the Hub: {first_line(err)}") from None


def pull(repo_id: str, dest: str | None = None, *, revision: str | None = None, token: str | None = None,
         with_base: bool = True) -> pathlib.Path:
    """Download a model, adapter or tokenizer repo (`snapshot_download`: cached, resumable) into the Hub cache, or
    into `dest`. An adapter's base comes too (into the cache) when it names a Hub repo."""
    from huggingface_hub import snapshot_download

    check_repo_id(repo_id)
    if dest is not None and pathlib.Path(dest).exists() and any(pathlib.Path(dest).iterdir()):
        raise HubError(f"{dest} exists and is not empty; pull into a new folder (nothing was written)")
    use_timeout()
    target = pathlib.Path(dest).expanduser() if dest is not None else None
    staging = target.with_name(f".{target.name}.pull-{os.getpid()}") if target is not None else None
    try:
        with hub_errors(repo_id, token, writing=False), _quiet_hub():
            path = pathlib.Path(snapshot_download(repo_id, revision=revision, token=token, local_dir=staging))
            adapter = path / "adapter_config.json"
            if with_base and adapter.is_file():
                base = json.loads(adapter.read_text()).get("base_model_name_or_path")
                if base and not pathlib.Path(base).exists() and _looks_like_repo_id(base):
                    snapshot_download(base, token=token)
        if staging is not None:  # complete: into place (a failed pull leaves no folder behind)
            shutil.rmtree(staging / ".cache", ignore_errors=True)
            if target.exists():
                target.rmdir()
            os.replace(staging, target)
            path = target
        return path
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _looks_like_repo_id(name: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)) and not name.startswith(".")


class hub_errors:
    """Hub client failures as one `HubError` line (no request headers, so no token) naming the fix."""

    def __init__(self, repo_id: str, token: str | None, writing: bool):
        self.repo_id, self.token, self.writing = repo_id, token, writing

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is None or isinstance(err, HubError) or not isinstance(err, Exception):
            return False
        message = self._message(err)
        if message is None:
            return False  # not a Hub failure: a bug, with its traceback
        raise HubError(message, exit_code=1 if self._environment_fault(err) else 2) from None

    @staticmethod
    def _environment_fault(err: Exception) -> bool:
        """The Hub or the network failed, not the user's input."""
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        status = getattr(getattr(err, "response", None), "status_code", None)
        return (status is not None and status >= 500) or _network_cause(err) is not None or \
            isinstance(err, (OfflineModeIsEnabled, LocalEntryNotFoundError))

    def _message(self, err: Exception) -> str | None:
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        repo = self.repo_id
        status = getattr(getattr(err, "response", None), "status_code", None)
        if isinstance(err, RevisionNotFoundError):
            return f"{repo}: that revision does not exist; check --revision (a branch, tag or commit)"
        if isinstance(err, GatedRepoError):
            return f"{repo} is gated: accept its conditions on the Hub, then log in (`hf auth login`) or pass --token"
        if isinstance(err, RepositoryNotFoundError):
            hint = "if it is private, pass --token or log in" if not self.token else "check the name and your access"
            return f"repo {repo} not found; {hint}"
        network = _network_cause(err)
        if network is not None:
            name = type(network).__name__
            if "Timeout" in name or isinstance(network, TimeoutError):
                return f"the Hub did not answer in time ({name}); check the connection (HF_ENDPOINT) and try again"
            return f"the Hub cannot be reached ({name}); check the connection or HF_ENDPOINT, or work offline"
        if isinstance(err, OfflineModeIsEnabled) or isinstance(err, LocalEntryNotFoundError):
            return f"{repo}: the Hub cannot be reached (offline, or HF_HUB_OFFLINE is set) and it is not in the cache"
        if isinstance(err, HfHubHTTPError) and status is not None:
            if status == 401:
                return ("the Hub refused the token (401): pass a valid --token, set HF_TOKEN or run `hf auth login`"
                        if self.token or os.environ.get("HF_TOKEN") else
                        f"{repo}: this needs a token (401); pass --token, set HF_TOKEN or run `hf auth login`")
            if status == 403:
                return (f"no write access to {repo} (403): push to your own namespace or use a token with write "
                        "permission" if self.writing else f"no access to {repo} (403): check the token's permissions")
            if status == 404:
                return f"{repo}: not found on the Hub (404); check the repo id and --revision"
            if status >= 500:
                return f"the Hub failed with {status} during the {'push' if self.writing else 'download'}; nothing " \
                       "was changed locally: try again"
            return f"the Hub answered {status} for {repo}: {_scrub(first_line(err), self.token)}"
        if isinstance(err, (OSError, ValueError)):
            return f"{repo}: {_scrub(first_line(err), self.token)}"
        return None


def _network_cause(err: BaseException) -> BaseException | None:
    """The timeout or connection failure behind `err` (the Hub client wraps them, e.g. in LocalEntryNotFoundError
    after falling back to the cache), or None."""
    seen = 0
    while err is not None and seen < 10:
        name = type(err).__name__
        if "Timeout" in name or "Connect" in name or isinstance(err, (TimeoutError, ConnectionRefusedError)):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def _scrub(text: str, token: str | None) -> str:
    for secret in filter(None, (token, os.environ.get("HF_TOKEN"))):
        text = text.replace(secret, "<token>")
    return re.sub(r"hf_[A-Za-z0-9]{8,}", "<token>", text)


class _quiet_hub:
    """The Hub client's own log lines ("No files have been modified ...") are replaced by llmkit's summary."""

    def __enter__(self):
        from huggingface_hub.utils import logging

        self.logger = logging.get_logger("huggingface_hub")
        self.level = self.logger.level
        self.logger.setLevel("ERROR")

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
        return False


def model_card(path: pathlib.Path, staged: pathlib.Path, *, kind: str, exported: str | None, repo_id: str | None,
               license: str | None):
    from .model_card import build_card

    return build_card(path, staged, kind=kind, exported=exported, repo_id=repo_id, license=license)
