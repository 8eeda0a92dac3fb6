import os
import pathlib

import pytest
import torch

# Offline and quiet by default: tests never reach the Hub and never pick up a user's token.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))

SHAKESPEARE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
SEEDS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "seeds"


REPO = pathlib.Path(__file__).resolve().parents[1]


def subprocess_env() -> dict:
    """Environment for llmkit subprocesses: CPU only, offline, and this checkout's llmkit first on the path."""
    env = dict(os.environ)
    env.update(CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="session")
def shakespeare_path() -> pathlib.Path:
    if not SHAKESPEARE.exists():
        pytest.skip("../shared/data/tinyshakespeare.txt is not beside this checkout")
    return SHAKESPEARE


@pytest.fixture(scope="session")
def shakespeare_head(shakespeare_path, tmp_path_factory):
    """`shakespeare_head(chars)`: a file holding the first `chars` characters of tinyshakespeare (one per size)."""
    made: dict[int, pathlib.Path] = {}

    def make(chars: int) -> pathlib.Path:
        if chars not in made:
            made[chars] = tmp_path_factory.mktemp("corpus") / f"shakespeare_head_{chars}.txt"
            made[chars].write_text(shakespeare_path.read_text()[:chars])
        return made[chars]

    return make
