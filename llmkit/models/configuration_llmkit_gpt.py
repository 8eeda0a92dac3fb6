"""Configuration of the llmkit GPT.

Design choices:
- GPT-2's field names wherever the concept is the same (`n_embd`, `n_layer`, `n_head`, `n_positions`,
  `layer_norm_epsilon`, `embd_pdrop`/`attn_pdrop`/`resid_pdrop`, `tie_word_embeddings`), so a GPT2Config
  reads like ours and `attribute_map` gives the generic names (`hidden_size`, ...) that transformers'
  caches, masks and generation code look up.
- Defaults are GPT-2's architecture (pre-norm, learned positions, biases, tied embeddings) with exact GELU
  and no dropout; the modern options (rotary positions, RMSNorm, SwiGLU) are each one switch.
- Every invalid combination fails here, at construction, with a one-line message that names the field and
  the fix, never later inside a forward pass.
"""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

POSITION_TYPES = ("learned", "rotary")
NORM_TYPES = ("layernorm", "rmsnorm")
MLP_TYPES = ("gelu", "swiglu")


class LlmkitGPTConfig(PretrainedConfig):
    """Hyper-parameters of `LlmkitGPTForCausalLM`.

    Args:
        vocab_size, n_positions, n_embd, n_layer, n_head: sizes, as in GPT2Config (`n_positions` is the context).
        n_inner: MLP hidden width; default 4*n_embd, or 8/3*n_embd rounded up to a multiple of 64 for SwiGLU
            (the same parameter count as a 4x GELU MLP).
        activation_function: any key of `transformers.activations.ACT2FN` ("gelu" exact, "gelu_new" is
            GPT-2's tanh approximation); used by the `gelu` MLP. SwiGLU always gates with SiLU.
        mlp_type: "gelu" (Linear, activation, Linear) or "swiglu" (SiLU(x W1) * (x W3), then W2).
        norm_type: "layernorm" or "rmsnorm".
        position_embedding_type: "learned" (a wpe table of n_positions rows) or "rotary" (RoPE in attention,
            `rope_theta` base; `rope_parameters` takes transformers' RoPE scaling types too).
        bias: biases in every linear layer and LayerNorm. qkv_bias: biases of the query/key/value projection
            (None: same as `bias`).
        embd_pdrop, attn_pdrop, resid_pdrop: dropout after the embeddings, on attention weights, on residual
            branches.
        qk_norm: RMSNorm (with a learned scale per head dimension) of each head's queries and keys before the
            rotary positions and the dot product, as OLMo 2, Qwen3 and modded-nanogpt.
        zero_init_residual: the two residual projections of each block (attention's and the MLP's output) start
            at zero, so every block starts as the identity (modded-nanogpt); otherwise GPT-2's scaled init.
    """

    model_type = "llmkit-gpt"
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }

    def __init__(
        self,
        vocab_size: int = 50257,
        n_positions: int = 1024,
        n_embd: int = 768,
        n_layer: int = 12,
        n_head: int = 12,
        n_inner: int | None = None,
        activation_function: str = "gelu",
        mlp_type: str = "gelu",
        norm_type: str = "layernorm",
        position_embedding_type: str = "learned",
        rope_theta: float = 10000.0,
        rope_parameters: dict | None = None,
        bias: bool = True,
        qkv_bias: bool | None = None,
        layer_norm_epsilon: float = 1e-5,
        initializer_range: float = 0.02,
        embd_pdrop: float = 0.0,
        attn_pdrop: float = 0.0,
        resid_pdrop: float = 0.0,
        tie_word_embeddings: bool = True,
        qk_norm: bool = False,
        zero_init_residual: bool = False,
        use_cache: bool = True,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        _validate(locals())
        self.vocab_size = vocab_size
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.mlp_type = mlp_type
        if n_inner is None:
            n_inner = 4 * n_embd if mlp_type == "gelu" else 64 * -(-8 * n_embd // (3 * 64))
        self.n_inner = n_inner
        self.activation_function = activation_function
        self.norm_type = norm_type
        self.position_embedding_type = position_embedding_type
        if position_embedding_type == "rotary":  # a learned-position config has no rope attributes at all
            rope_parameters = dict(rope_parameters or {})
            rope_parameters.setdefault("rope_type", "default")
            rope_parameters.setdefault("rope_theta", float(rope_theta))
            self.rope_parameters = rope_parameters
            self.rope_theta = float(rope_theta)
        self.bias = bias
        self.qkv_bias = bias if qkv_bias is None else qkv_bias
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.embd_pdrop = embd_pdrop
        self.attn_pdrop = attn_pdrop
        self.resid_pdrop = resid_pdrop
        self.qk_norm = qk_norm
        self.zero_init_residual = zero_init_residual
        self.use_cache = use_cache
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )


def _validate(args: dict) -> None:
    """Raise one ValueError per bad setting, naming the field and the fix."""

    def positive_int(name):
        value = args[name]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")

    for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        positive_int(name)
    if args["n_inner"] is not None:
        positive_int("n_inner")
    n_embd, n_head = args["n_embd"], args["n_head"]
    if n_embd % n_head:
        raise ValueError(
            f"n_embd ({n_embd}) must be divisible by n_head ({n_head}); "
            f"try n_head={_nearest_divisor(n_embd, n_head)} or n_embd={n_head * max(1, round(n_embd / n_head))}"
        )
    for name, allowed in (
        ("mlp_type", MLP_TYPES),
        ("norm_type", NORM_TYPES),
        ("position_embedding_type", POSITION_TYPES),
    ):
        if args[name] not in allowed:
            raise ValueError(f"{name}={args[name]!r} is not supported; use one of {', '.join(allowed)}")
    if args["activation_function"] not in ACT2FN:
        raise ValueError(
            f"activation_function={args['activation_function']!r} is unknown; use one of "
            "gelu, gelu_new, relu, silu (any key of transformers.activations.ACT2FN)"
        )
    if args["position_embedding_type"] == "rotary" and (n_embd // n_head) % 2:
        raise ValueError(f"rotary positions need an even head size, got n_embd/n_head = {n_embd // n_head}")
    for name in ("qk_norm", "zero_init_residual"):
        if not isinstance(args[name], bool):
            raise ValueError(f"{name} must be true or false, got {args[name]!r}")
    for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
        if not 0.0 <= float(args[name]) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {args[name]!r}")


def _nearest_divisor(n: int, target: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - target))
