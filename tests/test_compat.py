"""The private touchpoints of llmkit's dependencies (llmkit/compat.py) are all where llmkit expects them, and each
wrapper computes what the public API would."""

import torch

from llmkit import compat


def test_every_private_touchpoint_is_there_as_checked():
    assert compat.check() == []


def test_the_wrappers_compute_what_public_code_would():
    xs = [torch.randn(3, 4), torch.randn(5)]
    torch.testing.assert_close(torch.stack(compat.foreach_norm(xs)), torch.stack([x.norm() for x in xs]))
    a, w, b = torch.randn(6, 8), torch.randn(4, 8), torch.randn(4)
    torch.testing.assert_close(compat.onednn_linear(a, w, b), torch.nn.functional.linear(a, w, b), rtol=1e-4,
                               atol=1e-5)
    assert callable(compat.hub_client_factory())
