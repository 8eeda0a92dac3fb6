"""Folders for people without llmkit: `llmkit merge` (an adapter folded into its base) and, later, exports.

Design choices:
- The output is a plain transformers model folder (safetensors, config, tokenizer, generation config) that
  `AutoModelForCausalLM` loads; a merge of an adapter on stock GPT-2 is a stock GPT-2.
- Nothing is half-written and nothing is overwritten: the folder is written beside its destination and renamed
  into place when complete; an existing destination is refused before any work.
"""

from __future__ import annotations

import os
import pathlib
import shutil

from .config import ConfigError


def check_new_folder(out: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(out).expanduser()
    if path.exists():
        raise ConfigError(f"{path} already exists; choose a new folder (nothing was written)")
    if not path.parent.exists():
        raise ConfigError(f"{path.parent} does not exist; create it or choose another destination")
    return path


def write_folder(out: pathlib.Path, write) -> pathlib.Path:
    """Call `write(tmp)` on a temporary sibling of `out`, then rename it to `out`."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def merge(adapter: str, out: str, *, base: str | None = None, revision: str | None = None,
          trust_remote_code: bool = False) -> pathlib.Path:
    """Fold a LoRA adapter run into its base (`merge_and_unload`) and save the plain model in `out`."""
    from .models.loading import is_adapter, load_model

    path = check_new_folder(out)
    if not is_adapter(adapter, revision):
        raise ConfigError(f"{adapter} is not an adapter run (no adapter_config.json); merge takes a LoRA run folder")
    model, tokenizer = load_model(base or adapter, adapter=adapter if base else None, revision=revision,
                                  trust_remote_code=trust_remote_code, device="cpu", merge=True)

    def write(tmp: pathlib.Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return write_folder(path, write)
