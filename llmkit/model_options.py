"""The `model:` options of a config, declared once: the config's `ModelConfig` dataclass (keys, types, defaults,
did-you-mean), the defaults from scratch, the settings a pretrained model fixes, the options only llmkit-gpt has
(refused for `arch: gpt2`), how each is read back from a pretrained model's config, and what the factory builds
from them all come from `MODEL_OPTIONS`. (Beside the models package, not in it: reading a config must not import
torch and transformers, which `llmkit.models` does.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# how a pretrained config names the size settings (transformers' generic attribute names, every architecture)
_GENERIC = {"n_layer": "num_hidden_layers", "n_head": "num_attention_heads", "n_embd": "hidden_size",
            "n_positions": "max_position_embeddings", "tie_word_embeddings": "tie_word_embeddings"}


@dataclass(frozen=True)
class ModelOption:
    name: str
    type: Any
    doc: str
    default: Any = None  # the ModelConfig default (None: unset, resolved later)
    scratch: Any = None  # the default of a model built from scratch, where it differs from the architecture's
    fixed: bool = False  # a pretrained model's setting: a config may repeat it but not change it
    architecture: bool = False  # handed to the model's config when it is built
    llmkit_only: bool = False  # llmkit-gpt has it, GPT2Config does not

    @property
    def generic(self) -> str | None:
        return _GENERIC.get(self.name)


MODEL_OPTIONS: tuple[ModelOption, ...] = (
    ModelOption("arch", str | None, "llmkit-gpt | gpt2; default llmkit-gpt, or the pretrained model's own",
                scratch="llmkit-gpt"),
    ModelOption("from_pretrained", str | None, "a run folder, model folder, adapter run or Hub id to start from"),
    ModelOption("revision", str | None, "Hub branch, tag or commit of from_pretrained"),
    ModelOption("n_layer", int | None, "blocks", scratch=4, fixed=True, architecture=True),
    ModelOption("n_head", int | None, "attention heads", scratch=4, fixed=True, architecture=True),
    ModelOption("n_embd", int | None, "width", scratch=128, fixed=True, architecture=True),
    ModelOption("n_positions", int | None, "the context length", scratch=256, fixed=True, architecture=True),
    ModelOption("n_inner", int | None, "MLP width (default 4 x n_embd; 8/3 x n_embd for SwiGLU)", fixed=True,
                architecture=True),
    ModelOption("dropout", float | None, "all dropout rates; default 0.0 from scratch, the pretrained model's "
                "otherwise (may be changed)", scratch=0.0, architecture=True),
    ModelOption("activation_function", str | None, "default gelu (llmkit-gpt), gelu_new (gpt2)", fixed=True,
                architecture=True),
    ModelOption("mlp_type", str | None, "gelu | swiglu", fixed=True, architecture=True, llmkit_only=True),
    ModelOption("norm_type", str | None, "layernorm | rmsnorm", fixed=True, architecture=True, llmkit_only=True),
    ModelOption("position_embedding_type", str | None, "learned | rotary", fixed=True, architecture=True,
                llmkit_only=True),
    ModelOption("rope_theta", float | None, "rotary base (default 10000)", fixed=True, architecture=True,
                llmkit_only=True),
    ModelOption("bias", bool | None, "biases in every linear layer and LayerNorm", fixed=True, architecture=True,
                llmkit_only=True),
    ModelOption("qkv_bias", bool | None, "biases of the q/k/v projection (default: bias)", fixed=True,
                architecture=True, llmkit_only=True),
    ModelOption("qk_norm", bool | None, "RMSNorm of each head's queries and keys (default false)", fixed=True,
                architecture=True, llmkit_only=True),
    ModelOption("zero_init_residual", bool | None, "residual projections start at zero (default false: GPT-2's "
                "scaled init)", architecture=True, llmkit_only=True),
    ModelOption("tie_word_embeddings", bool | None, "the head shares the embedding matrix", scratch=True, fixed=True,
                architecture=True),
    ModelOption("attn_implementation", str | None, "sdpa (default) | eager | flash_attention_2 ..."),
    ModelOption("trust_remote_code", bool, "run a Hub model's own code (never the default)", default=False),
)

OPTIONS = {o.name: o for o in MODEL_OPTIONS}
SCRATCH_DEFAULTS = {o.name: o.scratch for o in MODEL_OPTIONS if o.scratch is not None}
PRETRAINED_FIXED = tuple(o.name for o in MODEL_OPTIONS if o.fixed)
LLMKIT_ONLY = tuple(o.name for o in MODEL_OPTIONS if o.llmkit_only)
# what both architectures' configs take under the same names (validated alike, see factory.build_config)
SHARED = ("vocab_size", "embd_pdrop", "attn_pdrop", "resid_pdrop",
          *(o.name for o in MODEL_OPTIONS if o.architecture and not o.llmkit_only and o.name != "dropout"))


def architecture_options(m) -> dict:
    """The settings of a `model:` section (resolved) that the factory builds a model from, the unset ones left out."""
    return {o.name: getattr(m, o.name) for o in MODEL_OPTIONS if o.architecture and getattr(m, o.name) is not None}


def settings_of(config) -> dict:
    """A pretrained model's config under the `model.*` names (only those its family knows)."""
    family = config.model_type
    settings = {"arch": family}
    for o in MODEL_OPTIONS:
        if not o.fixed:
            continue
        if o.generic:
            settings[o.name] = getattr(config, o.generic, None)
        elif family == "llmkit-gpt" or (family == "gpt2" and not o.llmkit_only):
            settings[o.name] = getattr(config, o.name, None)
    if family in ("llmkit-gpt", "gpt2"):
        settings["n_inner"] = settings.get("n_inner") or 4 * config.n_embd
    return settings
