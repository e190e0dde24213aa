"""Time what ``train.distill_from`` costs on one GPU: scoring the teachers, and a student's epoch.

Teachers here are untrained models of the real architecture (their weights do not change the
work, only the numbers they give): ``--teachers`` of the time-input recipe, written as model
folders. Then, each alone on the device and eager as ``lite-rec train`` runs:

1. ``teacher_soft_targets`` over every onepass window of the data, twice (the first includes
   CUDA start-up and the allocator's growth);
2. a few epochs of ``--profile gpu`` without and with the teachers, their median epoch time.

    python3 scripts/distill_bench.py --processed-dir .carry/ml1m --item-vectors .carry/ml1m/vectors.safetensors \
        --out $OUT/distill-bench.json

Needs only torch, pandas, pyarrow, safetensors and pydantic + PyYAML (the config), like
``scripts/gpu_suite.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lite_rec.batches import build_sequence_store, item_contexts, plan_onepass, read_sequences  # noqa: E402
from lite_rec.checkpoint import save_model  # noqa: E402
from lite_rec.config import build_config  # noqa: E402
from lite_rec.distill import load_teachers, teacher_soft_targets  # noqa: E402
from lite_rec.model import build_model  # noqa: E402
from lite_rec.train import read_item_vectors, train_model  # noqa: E402

TIME_INPUTS = ["model.time_gaps=true", "model.ratings=true", "model.time_bias=true"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processed-dir", type=Path, required=True)
    p.add_argument("--item-vectors", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="results JSON")
    p.add_argument("--work", type=Path, default=Path("/tmp/distill-bench"), help="teacher and run folders")
    p.add_argument("--dataset", default="ml-1m", help="dataset config name (the teachers' and the runs')")
    p.add_argument("--teachers", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--common", nargs="*", default=[], help="config overrides for teachers and students (e.g. a small model for a CPU check)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sequences = read_sequences(args.processed_dir / "sequences.parquet")
    vectors = read_item_vectors(args.item_vectors)
    n_items = vectors.shape[0] - 1
    dataset = args.dataset
    teacher_cfg = build_config(dataset, ["train.strategy=onepass", *TIME_INPUTS, *args.common], profile="gpu")
    dirs = []
    for i in range(args.teachers):
        torch.manual_seed(i)
        model, _ = build_model(teacher_cfg.model, n_items, vectors, causal=True)
        dirs.append(save_model(model, args.work / f"teacher{i}", {"protocol": {"fit_on": "train"},
                                                                   "config": teacher_cfg.model_dump(mode="json")}).parent)
    teachers = load_teachers(dirs, n_items=n_items, dataset=dataset, refit=False, device=device)
    store = build_sequence_store(sequences["train_seq"])
    plan = plan_onepass(store, teacher_cfg.model.max_seq_len)
    scoring = []
    for _ in range(2):
        soft = teacher_soft_targets(teachers, store, plan, max_len=teacher_cfg.model.max_seq_len,
                                    contexts_of=lambda t: item_contexts(sequences, **t.spec.context_features),
                                    top_k=teacher_cfg.train.distill_top_k, batch_size=teacher_cfg.train.batch_size,
                                    device=device, bf16=device.type == "cuda")
        scoring.append(soft.seconds)
    table_bytes = soft.items.element_size() * soft.items.numel() + soft.probs.element_size() * soft.probs.numel()
    del teachers, soft
    if device.type == "cuda":
        torch.cuda.empty_cache()
    runs = {}
    for name, extra in (("student-without", []), ("student-with", [f"train.distill_from=[{','.join(map(str, dirs))}]"])):
        cfg = build_config(dataset, [f"train.max_epochs={args.epochs}", "train.finetune_epochs=0",
                                     f"train.device={device.type}", *args.common, *extra], profile="gpu")
        t0 = time.perf_counter()
        result = train_model(cfg, sequences, vectors, args.work / name, progress=False)
        epochs = [h["seconds"] for h in result.history]
        runs[name] = {"epoch_seconds": epochs, "median_epoch_seconds": statistics.median(epochs[1:] or epochs),
                      "wall_seconds": time.perf_counter() - t0, "distill_seconds": result.metrics.get("distill_seconds")}
    out = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "teachers": args.teachers, "teacher_inputs": TIME_INPUTS, "positions": int(plan.n_targets),
           "scoring_seconds": scoring, "soft_table_bytes": table_bytes, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
