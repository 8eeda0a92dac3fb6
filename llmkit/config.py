"""One YAML config for every workflow: typed sections, dotted command-line overrides, early one-line errors.

Design choices:
- Each section is a small dataclass; its fields are the public key names (`model.n_layer`, `data.source`, ...).
- `training` is not duplicated: any `transformers.TrainingArguments` field passes straight through, checked
  against TrainingArguments' own dataclass fields; llmkit only supplies defaults (see `llmkit.training`). `lora`
  is the same for `peft.LoraConfig`: present (even empty) means LoRA fine-tuning.
- Settings that depend on a starting model are resolved here, once: a config that starts from scratch gets
  llmkit's default sizes, one with `model.from_pretrained` gets the pretrained model's sizes, context and
  tokenizer, and any size or option set against them is an error rather than silently ignored. The resolved
  config is what a run saves, so re-running a run's `config.yaml` reproduces it.
- Unknown keys and wrong types fail before any work starts, with the key's dotted path and a did-you-mean.
- Overrides are `section.key=value`, the value parsed as YAML (`training.max_steps=200`, `sample.prompts=[a, b]`).
"""

from __future__ import annotations

import dataclasses
import difflib
import pathlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import ConfigError, OneLineError, RunError, first_line  # noqa: F401  (re-exported)
from .model_options import MODEL_OPTIONS, PRETRAINED_FIXED, SCRATCH_DEFAULTS

# The model section's keys, types and defaults come from llmkit.models.options (declared once, read by the factory,
# the loader and validation too).
ModelConfig = dataclasses.make_dataclass(
    "ModelConfig", [(o.name, o.type, field(default=o.default)) for o in MODEL_OPTIONS])
ModelConfig.__module__ = __name__
ModelConfig.__doc__ = "The `model:` section: " + "; ".join(f"{o.name}: {o.doc}" for o in MODEL_OPTIONS)


@dataclass
class TokenizerConfig:
    kind: str | None = None  # bpe | char | word | pretrained; default bpe, or pretrained with model.from_pretrained
    vocab_size: int | None = None
    name_or_path: str | None = None  # for kind=pretrained (default: model.from_pretrained)
    min_frequency: int = 1
    lowercase: bool = True  # word level only
    sample_chars: int | None = 100_000_000  # bpe/word: learn from at most this much text, spread over the corpus


@dataclass
class CleanConfig:
    drop_metadata_lines: bool = False
    collapse_blank_lines: bool = False
    min_words: int | None = None
    max_words: int | None = None
    dedup: bool = False


@dataclass
class DataConfig:
    source: str = "builtin"  # file, glob, folder, .jsonl/.csv/.parquet, Hub dataset id, or builtin
    val_source: str | None = None
    text_field: str = "text"
    hub_config: str | None = None
    hub_split: str = "train"
    block_size: int | None = None  # defaults to model.n_positions
    val_ratio: float = 0.1
    val_split: str = "random"  # random (seeded segments) | tail (the corpus' end, nanoGPT's way)
    seed: int = 1337
    packing: str | None = None  # text: blocks (default) | random (nanoGPT's windows); instruct: packed | padded
    format: str = "text"  # text | instruct (prompt/response or chat messages, rendered with a chat template) |
    #                       preference (prompt/chosen/rejected rows, for the `preference:` section)
    prompt_field: str = "prompt"  # instruct and preference columns
    response_field: str = "response"
    chosen_field: str = "chosen"  # preference: the better answer (a string, or a list of assistant messages)
    rejected_field: str = "rejected"  # preference: the worse answer
    messages_field: str = "messages"  # a list of {role, content}, used when the rows have it
    chat_template: str | None = None  # Jinja string or .jinja file; default: <|user|>{q}\n<|assistant|>{a}<|endoftext|>
    special_tokens: list[str] | None = None  # added to the tokenizer; default: the <|...|> markers of the template
    overlong: str = "truncate"  # instruct examples longer than the context: truncate | drop
    train_on_prompt: bool = False  # instruct: the loss on prompt tokens too (default: answers only)
    errors: str = "strict"  # strict | replace | ignore: bytes that are not UTF-8; preference rows that are unusable
    #                         (strict refuses them in one line, ignore/replace drop them and report the counts)
    streaming: bool = False
    num_proc: int = 1
    cache_dir: str | None = None  # default: ~/.cache/llmkit/data
    clean: CleanConfig = field(default_factory=CleanConfig)


@dataclass
class DistillConfig:
    teacher: str | None = None  # run folder, Hub id or adapter run; shares the student's tokenizer
    temperature: float = 4.0  # softens both distributions: soft loss = KL(teacher_T, student_T) * T^2
    alpha: float = 0.5  # weight of the soft loss; 1 - alpha weighs the cross-entropy on the data
    kind: str = "forward_kl"  # forward_kl (KL(teacher || student), the curriculum's) | reverse_kl


# preference.method: llmkit's name -> TRL's DPO loss_type (the paired losses of trl.DPOTrainer)
PREFERENCE_METHODS = {"dpo": "sigmoid", "ipo": "ipo", "robust": "robust", "hinge": "hinge", "sppo_hard": "sppo_hard",
                      "nca_pair": "nca_pair", "apo_zero": "apo_zero", "apo_down": "apo_down",
                      "sigmoid_norm": "sigmoid_norm"}


@dataclass
class PreferenceConfig:
    """Preference tuning on TRL's `DPOTrainer` (its losses, reference handling and metrics), on llmkit's core."""

    method: str = "dpo"  # a key of PREFERENCE_METHODS: dpo (TRL's sigmoid loss), ipo, robust, hinge, ...
    beta: float = 0.1  # how far the model may move from the reference (IPO's tau)
    label_smoothing: float = 0.0  # robust: the share of pairs whose labels are taken as flipped, in [0, 0.5)
    sft_weight: float = 0.0  # adds the chosen answers' language-model loss at this weight (RPO; TRL's "sft" loss)
    reference: str | None = None  # default: the starting model, frozen (with lora: the adapter disabled, no copy)
    max_prompt_length: int | None = None  # longer prompts are unusable rows (default: the context less one token)
    precompute_reference: bool = False  # the reference's log-probs once before training; no reference kept in memory


def decode_escapes(text: str) -> str:
    """`\\n` -> newline, `\\t` -> tab, `\\\\` -> one backslash; any other backslash stays as it is. What a shell
    passes for "\\n" (two characters) becomes the newline the user meant; `\\\\n` stays a backslash and an n."""
    import re

    return re.sub(r"\\([\\nt])", lambda m: {"\\": "\\", "n": "\n", "t": "\t"}[m.group(1)], text)


@dataclass
class SampleConfig:
    """Samples during training. `prompts` and `stop` decode `\\n`, `\\t` and `\\\\` as `--prompt`/`--stop` do."""

    prompts: list[str] = field(default_factory=lambda: ["\n"])
    stop: list[str] | None = None  # stop strings
    max_new_tokens: int = 100
    do_sample: bool = True
    temperature: float = 0.8
    top_k: int | None = 40
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int = 1234


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] | None = None  # peft.LoraConfig fields; None: no LoRA
    distill: DistillConfig | None = None  # a teacher's soft targets; None: no distillation
    preference: PreferenceConfig | None = None  # DPO and its relatives (with data.format: preference)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | pathlib.Path) -> None:
        """Write the resolved config as YAML; secrets (`hub_token`, any `*_token` setting) are written redacted,
        since the run folder is what gets shared and pushed."""
        data = self.to_dict()
        data["training"] = {k: "<redacted>" if k.endswith("_token") and v else v for k, v in data["training"].items()}
        for key in ("prompts", "stop"):  # saved so that reading them back (which decodes escapes) gives them again
            if data["sample"].get(key):
                data["sample"][key] = [x.replace("\\", "\\\\") for x in data["sample"][key]]
        pathlib.Path(path).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))

    @property
    def block_size(self) -> int:
        return self.data.block_size or self.model.n_positions


# Keys of the training section that llmkit reads itself, never passed to TrainingArguments, with their types.
# `resume_from_checkpoint: true` means the last complete checkpoint.
LLMKIT_TRAINING_EXTRAS = {"early_stopping_patience": int, "resume_from_checkpoint": str | bool | None,
                          "on_nonfinite": str,  # stop (default) | skip: a NaN/inf loss or gradient
                          "optimizer": str,  # adamw (default) | muon | a transformers optim name
                          "muon": dict | None,  # Muon's own settings (training/optim.py)
                          "max_time": float,  # seconds of training, then the final evaluation and save
                          # evaluations during training score this many validation tokens (default 16384: a fixed,
                          # evenly spread subset of the blocks; null: all); the last step and the final model are
                          # scored on the whole split
                          "eval_subsample_tokens": int | None}


def load_config(path: str | pathlib.Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults), apply `a.b=value` overrides, and validate everything."""
    raw: dict = {}
    if path is not None:
        path = pathlib.Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass a YAML file such as configs/quickstart.yaml")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            problem = " ".join(str(getattr(err, "problem", None) or err).split())
            raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, data:, ...)")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. training.max_steps=200")
        _set_dotted(raw, key.strip(), _parse_value(value))
    return resolve(_build(Config, raw, ""))


def resolve(cfg: Config) -> Config:
    """Fill the settings that depend on the starting model (see the module docstring), in place."""
    m, t, d = cfg.model, cfg.tokenizer, cfg.data
    d.packing = d.packing or ("blocks" if d.format == "text" else "packed")
    _check_distill(cfg.distill)
    _check_preference(cfg)
    if m.from_pretrained is None:
        for key, value in SCRATCH_DEFAULTS.items():
            if getattr(m, key) is None:
                setattr(m, key, value)
        if t.kind is None and cfg.distill is not None:  # a student shares its teacher's tokenizer
            t.kind, t.name_or_path = "pretrained", t.name_or_path or cfg.distill.teacher
        t.kind = t.kind or "bpe"
        return cfg
    if t.kind not in (None, "pretrained"):  # a new vocabulary would give the pretrained ids other meanings
        raise ConfigError(
            f"model.from_pretrained={m.from_pretrained} needs its own tokenizer; remove tokenizer.kind={t.kind} "
            "(the model's tokenizer is the default: tokenizer.kind=pretrained)"
        )
    t.kind = "pretrained"
    t.name_or_path = t.name_or_path or m.from_pretrained
    from .loading import pretrained_settings

    own = pretrained_settings(m.from_pretrained, revision=m.revision, trust_remote_code=m.trust_remote_code)
    for key in PRETRAINED_FIXED:
        mine, theirs = getattr(m, key), own.get(key)
        if mine is not None and theirs is not None and mine != theirs:
            raise ConfigError(
                f"model.{key}={mine} contradicts the pretrained model {m.from_pretrained} ({key}={theirs}); remove "
                f"it{' (set data.block_size for shorter training blocks)' if key == 'n_positions' else ''}"
            )
        if mine is None:
            setattr(m, key, theirs)
    m.arch = m.arch or own["arch"]
    return cfg


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
    node[parts[-1]] = value


def _build(cls, raw: Any, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(raw).__name__}")
    if cls is SampleConfig:
        raw = {k: [decode_escapes(x) if isinstance(x, str) else x for x in v] if k in ("prompts", "stop") and
               isinstance(v, list) else decode_escapes(v) if k in ("prompts", "stop") and isinstance(v, str) else v
               for k, v in raw.items()}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown key {path}{_did_you_mean(key, names, prefix)}")
        hint = hints[key]
        section = _optional_section(hint)
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{path}.")
        elif section is not None:  # an optional section: present (even empty) turns it on
            kwargs[key] = None if value is None else _build(section, value, f"{path}.")
        elif key == "training" and cls is Config:
            kwargs[key] = _check_training(value)
        elif key == "lora" and cls is Config:
            kwargs[key] = _check_lora(value)
        else:
            kwargs[key] = _coerce(value, hint, path)
    return cls(**kwargs)


def _optional_section(hint: Any):
    """The dataclass of an `X | None` hint, else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        classes = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return classes[0] if classes else None
    return None


def _did_you_mean(key: Any, names: list[str], prefix: str) -> str:
    if not isinstance(key, str):  # YAML reads `?`, `1:`, `yes:` or `null:` as a key that is no name
        return f" (YAML read it as {type(key).__name__}); keys are names such as {prefix}{names[0]}"
    close = difflib.get_close_matches(key, names, n=1)
    return f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(prefix + n for n in names)}"


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """Check `value` against a simple type hint (int, float, str, bool, list[str], Optional of those)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{path} must be {getattr(hint, '__name__', hint)}, got {value!r} ({type(value).__name__})")


def _check_training(value: Any) -> dict:
    from transformers import TrainingArguments

    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"training must be a mapping of TrainingArguments fields, got {type(value).__name__}")
    fields = {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}
    hints = typing.get_type_hints(TrainingArguments)
    fields.update(LLMKIT_TRAINING_EXTRAS)
    hints.update(LLMKIT_TRAINING_EXTRAS)
    checked = {}
    for key, v in value.items():
        if key not in fields:
            raise ConfigError(f"unknown key training.{key}{_did_you_mean(key, list(fields), 'training.')}")
        hint = hints.get(key, Any)
        try:
            checked[key] = _coerce(v, hint, f"training.{key}")
        except (ConfigError, TypeError):
            if v is False and _loosely_ok("no", hint):  # YAML reads a bare `no` as False
                checked[key] = "no"
            elif _loosely_ok(v, hint):
                checked[key] = v
            else:
                raise
    return checked


def _check_distill(d: DistillConfig | None) -> None:
    if d is None:
        return
    if not d.teacher:
        raise ConfigError("distill.teacher is required: a run folder, Hub id or adapter run of the teacher model")
    if not 0.0 <= d.alpha <= 1.0:
        raise ConfigError(f"distill.alpha must be in [0, 1] (the weight of the soft loss), got {d.alpha}")
    if not d.temperature > 0:
        raise ConfigError(f"distill.temperature must be positive, got {d.temperature}")
    if d.kind not in ("forward_kl", "reverse_kl"):
        raise ConfigError(f"distill.kind={d.kind!r} is unknown; use forward_kl or reverse_kl")


def _check_preference(cfg: Config) -> None:
    """`data.format: preference` and the `preference:` section go together (the section's defaults when it is
    absent); they start from a trained model and do not mix with distillation."""
    p, d = cfg.preference, cfg.data
    if p is None and d.format == "preference":
        p = cfg.preference = PreferenceConfig()
    if p is None:
        return
    if d.format != "preference":
        raise ConfigError(f"the preference section trains on preference pairs: set data.format=preference (not "
                          f"{d.format}) with prompt/chosen/rejected rows, e.g. data.source=builtin-preference")
    if p.method not in PREFERENCE_METHODS:
        raise ConfigError(f"preference.method={p.method!r} is unknown{_did_you_mean(p.method, list(PREFERENCE_METHODS), '')}"
                          .replace("; known keys: ", "; use one of: "))
    if not p.beta > 0:
        raise ConfigError(f"preference.beta must be positive, got {p.beta}")
    if p.sft_weight < 0:
        raise ConfigError(f"preference.sft_weight must be >= 0, got {p.sft_weight}")
    if not 0.0 <= p.label_smoothing < 0.5:
        raise ConfigError(f"preference.label_smoothing must be in [0, 0.5), got {p.label_smoothing}")
    if p.max_prompt_length is not None and p.max_prompt_length < 1:
        raise ConfigError(f"preference.max_prompt_length must be positive, got {p.max_prompt_length}")
    if cfg.model.from_pretrained is None:
        raise ConfigError("preference tuning starts from a trained model: set model.from_pretrained (a run, an "
                          "instruct or adapter run, or a Hub id such as gpt2)")
    if cfg.distill is not None:
        raise ConfigError("a run is either distilled or preference-tuned: remove the distill or the preference section")
    if p.precompute_reference and cfg.lora is not None:
        raise ConfigError("preference.precompute_reference saves the reference's memory, which LoRA does not use (its "
                          "reference is the adapter disabled): remove one of them")


def _check_lora(value: Any) -> dict | None:
    """The `lora` section: keys must be `peft.LoraConfig` fields (values are checked when LoraConfig is built)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"lora must be a mapping of peft.LoraConfig fields (or {{}} for the defaults), got {value!r}")
    from peft import LoraConfig

    fields = [f.name for f in dataclasses.fields(LoraConfig) if f.init]
    for key in value:
        if key not in fields:
            raise ConfigError(f"unknown key lora.{key}{_did_you_mean(key, fields, 'lora.')}")
    return dict(value)


def _loosely_ok(value: Any, hint: Any) -> bool:
    """TrainingArguments hints include enums and dicts; accept strings/dicts where those are allowed."""
    text = str(hint)
    return (isinstance(value, str) and ("Enum" in text or "Strategy" in text or "Type" in text or "str" in text)) or (
        isinstance(value, dict) and "dict" in text
    ) or (isinstance(value, list) and "list" in text)
