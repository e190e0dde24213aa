"""Evaluate trained models alone and as a seed ensemble (mean of their log-probabilities or
probabilities), on validation and test, both ranking protocols.

Why: after seven sessions of tuning one model on ML-1m (docs/results.md) every single-model change
lands within the seed noise; averaging independently trained seeds is the one lever left that
needs no new information. This measures it; it is not part of the shipped method (serving one
model is the product). Needs only torch, pandas, pyarrow and safetensors, like the GPU workers.

    python3 scripts/ensemble_eval.py --processed-dir .carry/ml1m \\
        --model /tmp/ens/s42/gpu-seed42 --model /tmp/ens/s1/gpu-seed1 --out $OUT/ensemble.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lite_rec.batches import read_sequences  # noqa: E402
from lite_rec.checkpoint import load_model, write_json  # noqa: E402
from lite_rec.errors import DataError  # noqa: E402
from lite_rec.eval_cli import model_folders_parser  # noqa: E402
from lite_rec.evaluate import COMBINES, build_eval_set, ensemble_scorer, evaluate_scores, model_scorer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = model_folders_parser(__doc__.split("\n\n")[0], "repeat for each member").parse_args(argv)
    try:
        sequences = read_sequences(args.processed_dir / "sequences.parquet")
        models = {str(d): load_model(d, args.device)[0] for d in args.model}
        lengths = {m.spec.max_seq_len for m in models.values()}
        if len(lengths) != 1:
            raise DataError(f"ensemble members read different input windows (model.max_seq_len {sorted(lengths)}): "
                            f"{', '.join(map(str, args.model))}")
    except (DataError, OSError) as exc:  # a missing or foreign model folder: say which, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    max_len = lengths.pop()
    # the input context the members read (members that read none ignore it); mixed contexts cannot share one
    specs = {tuple(m.spec.context_features.items()) for m in models.values() if m.spec.uses_context}
    if len(specs) > 1:
        readers = "; ".join(" + ".join(f"model.{k}" if v is True else f"model.{k}={v}" for k, v in spec if v)
                            for spec in sorted(specs))
        print(f"error: ensemble members read different input contexts: {readers}", file=sys.stderr)
        return 2
    reader = next((m.spec for m in models.values() if m.spec.uses_context), None)
    try:
        eval_sets = {split: build_eval_set(sequences, split, reader) for split in ("valid", "test")}
    except DataError as exc:  # e.g. a sequences.parquet without the columns the context needs
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scorers = {name: model_scorer(m, device=args.device) for name, m in models.items()}
    candidates = dict(scorers)
    for combine in COMBINES:
        candidates[f"ensemble-{combine}"] = ensemble_scorer(scorers.values(), combine)
    results: dict = {"members": list(scorers), "device": args.device, "scores": {}}
    for name, scorer in candidates.items():
        start = time.perf_counter()
        metrics: dict[str, float] = {}
        for eval_set in eval_sets.values():
            metrics.update(evaluate_scores(scorer, eval_set, max_len=max_len, device=args.device,
                                           progress=False, pass_history=True))  # members without a history logit ignore it
        results["scores"][name] = {"metrics": metrics, "seconds": time.perf_counter() - start}
        short = {k: round(v, 4) for k, v in metrics.items() if k.endswith("recall_10") or k.endswith("ndcg_10")}
        print(f"{name}: {short}", flush=True)
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
