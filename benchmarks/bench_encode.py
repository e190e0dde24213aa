#!/usr/bin/env python
"""Time the item LLM over ML-1m-sized input (3,706 item texts) and print one JSON line per device.

Why: docs/design.md caches item vectors because encoding is the slow part of a small CPU run;
docs/benchmarks.md reports how slow it is on CPU and on a GPU.

Input, in order of preference:
- ``--items <processed>/items.parquet`` of the data stage (rendered with ``--template``);
- otherwise 3,706 synthetic ML-1m-like texts ("Title: <1-6 words> (<year>). Genres: <1-3
  genres>.", ~55 characters on average, like the real ones); the JSON says which.

``--random-weights`` builds the encoder from its config.json with random weights (same
architecture, same cost), for machines where the weight files cannot be copied. Timing starts
after the model is loaded and one warm-up batch has run; ``seconds``/``items_per_s`` are the
first full pass, ``best_s`` the best of ``--repeat`` passes, ``load_s`` the model load.

Examples:
    python benchmarks/bench_encode.py --device cpu
    python benchmarks/bench_encode.py --device cuda --items data/processed/ml-1m/items.parquet
Only torch and transformers are needed (pandas/pyarrow for --items).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lite_rec.items.encoder import ItemEncoder, resolve_device, resolve_encoder  # noqa: E402

ML1M_ITEMS = 3706  # items after 5-core filtering (the paper)
GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
WORDS = ("the of a man love night last story day house dark city king return life time girl world blue "
         "american big little dead secret star war wild lost high party summer game river black heart").split()


@dataclasses.dataclass(frozen=True)
class _EncoderSettings:
    """Stand-in for ``lite_rec.core.config.ItemEncoderConfig`` where pydantic is not installed."""

    model: str
    max_tokens: int
    batch_size: int
    device: str


def synthetic_texts(n: int = ML1M_ITEMS, seed: int = 0) -> list[str]:
    """ML-1m-like item texts from a fixed seed (no MovieLens data is shipped or needed)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        title = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))).title()
        genres = ", ".join(rng.sample(GENRES, rng.randint(1, 3)))
        texts.append(f"Title: {title} ({rng.randint(1919, 2000)}). Genres: {genres}.")
    return texts


def texts_from_parquet(path: Path, template: str, max_chars: int) -> list[str]:
    import pandas as pd

    from lite_rec.items.text import render_item_texts

    data = SimpleNamespace(item_text_template=template, max_description_chars=max_chars)
    return render_item_texts(pd.read_parquet(path), data, source=path)  # type: ignore[arg-type]


def random_weight_copy(model: str, into: Path) -> str:
    """A local folder with the model's config and tokenizer and freshly initialised weights."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    src = resolve_encoder(model)
    config = AutoConfig.from_pretrained(src)
    AutoModel.from_config(config).save_pretrained(into)
    AutoTokenizer.from_pretrained(src).save_pretrained(into)
    return str(into)


def bench(texts: list[str], settings: _EncoderSettings, progress: bool, repeat: int) -> dict:
    """First full pass after a one-batch warm-up (what one pipeline run pays), and the best
    of `repeat` passes (steady state, every shape already seen)."""
    t0 = time.perf_counter()
    encoder = ItemEncoder(settings)  # type: ignore[arg-type]
    load_s = time.perf_counter() - t0
    encoder.encode(texts[: settings.batch_size], progress=False)  # warm-up (kernels, allocator)
    passes = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        vectors = encoder.encode(texts, progress=progress)  # (N, D), returned on CPU: the GPU has synced
        passes.append(time.perf_counter() - t0)
    seconds = passes[0]
    name = torch.cuda.get_device_name(encoder.device) if encoder.device.type == "cuda" else platform.processor() or "cpu"
    return {
        "device": str(encoder.device), "device_name": name, "items": len(texts), "seconds": round(seconds, 3),
        "items_per_s": round(len(texts) / seconds, 1), "best_s": round(min(passes), 3), "repeat": repeat,
        "load_s": round(load_s, 3), "dim": int(vectors.shape[1]),
        "batch_size": settings.batch_size, "max_tokens": settings.max_tokens,
        "dtype": "bf16-autocast" if encoder.device.type == "cuda" else "fp32",
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=Path, help="items.parquet of the data stage (default: synthetic texts)")
    parser.add_argument("--template", default="Title: {title}. Genres: {genres}.", help="item text template for --items")
    parser.add_argument("--max-description-chars", type=int, default=300)
    parser.add_argument("--n", type=int, default=ML1M_ITEMS, help="number of synthetic texts")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="HF name or local folder")
    parser.add_argument("--random-weights", action="store_true", help="same architecture, random weights")
    parser.add_argument("--device", action="append", help="cpu, cuda, cuda:N, auto (repeatable; default: cpu and cuda if present)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--repeat", type=int, default=1, help="timed passes (best reported as best_s)")
    parser.add_argument("--progress", action="store_true", help="show the tqdm bar while timing")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.items:
        texts, source = texts_from_parquet(args.items, args.template, args.max_description_chars), str(args.items)
    else:
        texts, source = synthetic_texts(args.n), f"synthetic ML-1m-like titles (n={args.n}, seed 0)"
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    tmp = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    try:
        model = random_weight_copy(args.model, tmp / "model") if args.random_weights else args.model
        for spec in devices:
            resolve_device(spec)  # fail early with a clear message
            settings = _EncoderSettings(model, args.max_tokens, args.batch_size, spec)
            result = bench(texts, settings, args.progress, max(1, args.repeat))
            result.update(model=args.model, weights="random" if args.random_weights else "pretrained", source=source,
                          mean_chars=round(sum(map(len, texts)) / len(texts), 1))
            print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
