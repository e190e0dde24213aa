"""Write a Hugging Face encoder's body (config + weights without the word-embedding table, fp16)
to a folder that ``model.backbone=<folder>`` loads as a pretrained recommendation LLM.

Why: a device call carries at most 64 MiB and its machine has no hub. The recommendation LLM
takes item vectors as ``inputs_embeds``, so the token table (11.7M of all-MiniLM-L6-v2's 22.7M
parameters) is never used; without it and in fp16 the MiniLM body is 21 MB. Loading restores
fp32 master weights (``encoder_backbone.build_backbone``) and re-creates the unused table.

    python scripts/export_encoder_body.py sentence-transformers/all-MiniLM-L6-v2 .carry/minilm-body
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lite_rec.item_encoder import resolve_encoder  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("encoder", help="an encoder name (the MiniLM names resolve to the registry package) or a local folder")
    p.add_argument("out", type=Path)
    args = p.parse_args()
    src = Path(resolve_encoder(args.encoder))
    weights = src / "model.safetensors"
    if not weights.is_file() or not (src / "config.json").is_file():
        print(f"{src}: needs config.json and model.safetensors (a local folder or the installed MiniLM package)",
              file=sys.stderr)
        return 2
    state = load_file(str(weights))
    body = {k: v.to(torch.float16).contiguous() if v.is_floating_point() else v
            for k, v in state.items() if "word_embeddings" not in k and "embed_tokens" not in k and k != "shared.weight"}
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "model.safetensors.tmp"
    save_file(body, str(tmp), metadata={"format": "pt"})
    tmp.replace(args.out / "model.safetensors")
    shutil.copy(src / "config.json", args.out / "config.json")
    kept = sum(v.numel() for v in body.values())
    print(f"{args.out}: {len(body)} of {len(state)} tensors, {kept / 1e6:.1f}M parameters in fp16")
    return 0


if __name__ == "__main__":
    sys.exit(main())
