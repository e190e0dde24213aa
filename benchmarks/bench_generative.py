"""The generative baseline the paper compares against: a P5/POD-style recommender that spells item ids.

A T5-small encoder-decoder (``T5ForConditionalGeneration`` from ``T5Config``'s defaults, which are
t5-small's: d_model 512, 6 + 6 layers, 8 heads, d_ff 2048, ReLU; random weights: only its speed is
measured) reads a prompt that spells the user's history as item-id tokens and decodes the next
item's id token by token with beam search (20 beams, the top-20 beams are the top-20 items),
constrained to valid ids by a prefix trie through ``prefix_allowed_tokens_fn``, as P5's code does.
That callback runs in Python once per beam and step and reads each beam's tokens from the GPU,
so the same search is also timed with the trie as a tensor mask (``constraint="mask"``, one
``masked_fill`` per step): the generative model's cost without that overhead, the fairer lower
bound to compare with.

The prompt, P5's sequential-recommendation template in our own token ids:
``given the following interaction history of the user : <item> , <item> , ... predict the next item .``
Each item id is written with 4 digits and spelled as two 2-digit tokens (item 3416 -> "34" "16"),
then a separator: 3 tokens per history item, 12 template tokens, so a 20-item history is a
72-token prompt and a 200-item one 612 tokens (P5's SentencePiece spells a 4-digit id in 2-3
pieces plus ", "). The vocabulary is the 100 two-digit tokens, the separator, the template's
words and T5's pad/eos/unk (128 tokens): a smaller output layer than T5's 32,128, which makes
each decoding step cheaper than P5's, so the ratio measured against our step is a lower bound
(``--gen-vocab 32128`` measures T5's own vocabulary). Decoding is 3 steps: two id tokens and eos.

Importable (``benchmarks/bench_serve_suite.py`` runs it in the same process, on the same GPU, in
the same run as our step) and runnable alone:

    python3 benchmarks/bench_generative.py --out gen.json                          # one GPU
    python3 benchmarks/bench_generative.py --quick --device cpu --out /tmp/gen.json  # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

PAD, EOS, UNK = 0, 1, 2
CHUNK0 = 3  # token of the 2-digit chunk "00"; "99" is CHUNK0 + 99
SEP = CHUNK0 + 100
WORDS = SEP + 1  # template words follow
PREFIX_WORDS, SUFFIX_WORDS = 8, 4  # "given the following interaction history of the user :" / "predict the next item ."
SMALL_VOCAB = 128
ID_DIGITS = 4  # ids written 0001..9999: two chunk tokens
TOKENS_PER_ITEM = ID_DIGITS // 2 + 1

__all__ = ["GenerativeRecommender", "run_generative"]


class GenerativeRecommender:
    """A T5 encoder-decoder that reads spelled item ids and beam-searches the next item's id."""

    def __init__(self, n_items: int, device: torch.device, dtype: torch.dtype = torch.bfloat16, vocab: int = SMALL_VOCAB,
                 tiny: bool = False, beams: int = 20, seed: int = 0) -> None:
        from transformers import LogitsProcessor, T5Config, T5ForConditionalGeneration

        if n_items >= 10**ID_DIGITS:
            raise ValueError(f"{n_items} items do not fit {ID_DIGITS}-digit ids")
        if vocab < WORDS + PREFIX_WORDS + SUFFIX_WORDS:
            raise ValueError(f"the vocabulary needs at least {WORDS + PREFIX_WORDS + SUFFIX_WORDS} tokens")
        torch.manual_seed(seed)
        sizes = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4) if tiny else {}
        self.config = T5Config(vocab_size=vocab, decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS, **sizes)
        self.model = T5ForConditionalGeneration(self.config).to(device, dtype).eval()
        self.device, self.n_items, self.beams = device, n_items, beams
        self.prefix = torch.arange(WORDS, WORDS + PREFIX_WORDS)
        self.suffix = torch.arange(WORDS + PREFIX_WORDS, WORDS + PREFIX_WORDS + SUFFIX_WORDS)
        # the prefix trie of valid ids: decoded tokens so far -> the tokens that may follow
        self.trie: dict[tuple[int, ...], list[int]] = {}
        for item in range(1, n_items + 1):
            seq = (*self.spell(item), EOS)
            for n in range(len(seq)):
                self.trie.setdefault(seq[:n], []).append(seq[n])
        self.trie = {k: sorted(set(v)) for k, v in self.trie.items()}
        # the same trie as masks (ids have a fixed depth): step 0 -> (V,), step 1 -> (100, V) by the first chunk
        first = torch.zeros(vocab, dtype=torch.bool, device=device)
        first[self.trie[()]] = True
        second = torch.zeros(100, vocab, dtype=torch.bool, device=device)
        for prefix, nxt in self.trie.items():
            if len(prefix) == 1:
                second[prefix[0] - CHUNK0, nxt] = True
        end = torch.zeros(vocab, dtype=torch.bool, device=device)
        end[EOS] = True

        class TrieMask(LogitsProcessor):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                step = input_ids.shape[1] - 1  # tokens decoded after the start token
                if step == 0:
                    allowed = first[None]
                elif step == 1:
                    allowed = second[(input_ids[:, 1] - CHUNK0).clamp(0, 99)]  # (beams, V)
                else:
                    allowed = end[None]
                return scores.masked_fill(~allowed, float("-inf"))

        self.mask_processor = TrieMask()

    @staticmethod
    def spell(item: int) -> tuple[int, ...]:
        """item id -> its 2-digit chunk tokens (3416 -> "34" "16")."""
        digits = f"{item:0{ID_DIGITS}d}"
        return tuple(CHUNK0 + int(digits[i : i + 2]) for i in range(0, ID_DIGITS, 2))

    def prompts(self, histories: torch.Tensor) -> torch.Tensor:
        """(B, L) item ids 1..N -> (B, 12 + 3L) prompt tokens (every history of the batch has length L)."""
        b, length = histories.shape
        hi, lo = histories // 100 + CHUNK0, histories % 100 + CHUNK0  # (B, L) each: ids below 10,000
        spelled = torch.stack([hi, lo, torch.full_like(hi, SEP)], -1).view(b, length * TOKENS_PER_ITEM)
        return torch.cat([self.prefix.expand(b, -1), spelled, self.suffix.expand(b, -1)], 1)

    def allowed(self, batch_id: int, decoded: torch.Tensor) -> list[int]:  # noqa: ARG002 - HF's signature
        """``prefix_allowed_tokens_fn``: the trie's next tokens after what this beam decoded (its first token is the start)."""
        return self.trie.get(tuple(decoded[1:].tolist()), [PAD])

    @torch.inference_mode()
    def recommend(self, histories: torch.Tensor, k: int = 20, constraint: str = "prefix_fn") -> torch.Tensor:
        """(B, L) item ids -> (B, k) recommended item ids, best first (beam order). ``constraint``:
        ``prefix_fn`` (HF's ``prefix_allowed_tokens_fn``, as P5) or ``mask`` (the trie as tensors)."""
        from transformers import LogitsProcessorList

        ids = self.prompts(histories).to(self.device)
        how = ({"prefix_allowed_tokens_fn": self.allowed} if constraint == "prefix_fn"
               else {"logits_processor": LogitsProcessorList([self.mask_processor])})
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=self.beams,
                                  num_return_sequences=k, max_new_tokens=TOKENS_PER_ITEM, do_sample=False,
                                  early_stopping=True, **how)  # (B*k, 1 + 3)
        chunks = out[:, 1:TOKENS_PER_ITEM].long().cpu() - CHUNK0  # (B*k, 2) the id's two chunks
        return (chunks[:, 0] * 100 + chunks[:, 1]).view(histories.shape[0], k)

    def cache_bytes(self, batch: int, length: int) -> int:
        """Rough GPU memory of one beam search: the encoder output and the cross-attention keys and
        values of every layer, for batch x beams sequences (what grows with the prompt)."""
        tokens = batch * self.beams * (PREFIX_WORDS + SUFFIX_WORDS + TOKENS_PER_ITEM * length)
        width, layers = self.config.d_model, self.config.num_decoder_layers
        return tokens * width * 2 * (1 + 2 * layers) * 2  # bf16: 2 bytes; x2 for the allocator's slack


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t) * 1000


def run_generative(device: torch.device, n_items: int, lengths: tuple[int, ...] = (20, 200),
                   batches: tuple[int, ...] = (1, 32, 1024), k: int = 20, beams: int = 20, vocab: int = SMALL_VOCAB,
                   tiny: bool = False, reps: dict[int, int] | None = None, deadline: float | None = None,
                   memory_share: float = 0.6, constraints: tuple[str, ...] = ("prefix_fn", "mask")) -> dict:
    """ms per batch of the constrained beam search at each (length, batch): p50 over a few reps after
    one warm-up. A batch whose beam search would not fit ``memory_share`` of the free GPU memory is
    run as equal sequential chunks that do (``chunk`` says so); past ``deadline`` (monotonic
    seconds) the remaining shapes are skipped with that reason."""
    reps = reps or {1: 10, 32: 5, 1024: 2}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = GenerativeRecommender(n_items, device, dtype, vocab=vocab, tiny=tiny, beams=beams)
    rng = torch.Generator().manual_seed(3)
    for constraint in constraints:  # first calls: kernel selection, allocator growth, clocks (else on the first row)
        for _ in range(3):
            gen.recommend(torch.randint(1, n_items + 1, (1, lengths[0]), generator=rng), k, constraint)
    rows = []
    for length, batch, constraint in ((n, b, c) for n in lengths for b in batches for c in constraints):
        row: dict = {"constraint": constraint, "length": length, "batch": batch,
                     "prompt_tokens": PREFIX_WORDS + SUFFIX_WORDS + TOKENS_PER_ITEM * length}
        if deadline is not None and time.monotonic() > deadline:
            rows.append({**row, "error": "skipped: time budget"})
            continue
        chunk = batch
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
            while chunk > 1 and gen.cache_bytes(chunk, length) > memory_share * free:
                chunk //= 2
        histories = torch.randint(1, n_items + 1, (batch, length), generator=rng)

        def step(h: torch.Tensor = histories, c: int = chunk, how: str = constraint) -> torch.Tensor:
            return torch.cat([gen.recommend(h[i : i + c], k, how) for i in range(0, h.shape[0], c)])

        try:
            got = step()  # warm-up, and the answers' check
            times = [_timed(step, device) for _ in range(reps.get(batch, 3))]
        except torch.cuda.OutOfMemoryError as exc:
            rows.append({**row, "chunk": chunk, "error": f"OutOfMemoryError: {str(exc)[:300]}"})
            torch.cuda.empty_cache()
            continue
        valid = float(((got >= 1) & (got <= n_items)).float().mean())
        rows.append({**row, "chunk": chunk, "reps": len(times), "p50_ms": statistics.median(times), "min_ms": min(times),
                     "users_per_s": batch / statistics.median(times) * 1000, "valid_ids": valid,
                     "distinct_per_user": float(torch.tensor([len(set(r.tolist())) for r in got]).float().mean())})
        print(f"generative {constraint:>9} L={length:<4} B={batch:<5} {rows[-1]['p50_ms']:10.1f} ms per batch"
              + (f" (as chunks of {chunk})" if chunk < batch else ""), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    cfg = gen.config
    return {"model": {"d_model": cfg.d_model, "encoder_layers": cfg.num_layers, "decoder_layers": cfg.num_decoder_layers,
                      "heads": cfg.num_heads, "d_ff": cfg.d_ff, "vocab": cfg.vocab_size, "dtype": str(dtype).removeprefix("torch."),
                      "beams": beams, "k": k, "tokens_per_item": TOKENS_PER_ITEM, "template_tokens": PREFIX_WORDS + SUFFIX_WORDS,
                      "decode_steps": TOKENS_PER_ITEM,
                      "constraints": {"prefix_fn": "prefix trie via prefix_allowed_tokens_fn (P5's code)",
                                      "mask": "the same trie as a tensor mask per step (LogitsProcessor)"}},
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--items", type=int, default=3416)
    p.add_argument("--gen-vocab", type=int, default=SMALL_VOCAB, help="vocabulary size (128: ids spelled in digits; 32128: T5's)")
    p.add_argument("--quick", action="store_true", help="smoke test: a tiny T5, batches 1 and 4, lengths 20 and 40")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.quick:
        report = run_generative(device, args.items, (20, 40), (1, 4), vocab=args.gen_vocab, tiny=True, reps={1: 2, 4: 2})
    else:
        report = run_generative(device, args.items, vocab=args.gen_vocab)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": str(device), "torch": torch.__version__, **report}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
