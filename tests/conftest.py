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


@pytest.fixture(scope="session")
def shakespeare_path() -> pathlib.Path:
    if not SHAKESPEARE.exists():
        pytest.skip("../shared/data/tinyshakespeare.txt is not beside this checkout")
    return SHAKESPEARE
