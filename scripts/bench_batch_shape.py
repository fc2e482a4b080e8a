"""How far the packaged model's logits move with the batch shape they are computed in (issue #26).

    .venv/bin/python scripts/bench_batch_shape.py [--tokens 40] [--seed 7]

A worker decodes one token per ``llama_decode`` (beside other streams' tokens in the batch engine); a
verifier prefills the same tokens in one batch. This computes the logits of one sampled continuation in
several shapes, 1 llama.cpp thread, and prints, per shape against the one-batch prefill (and decode shapes
against a lone decode), the largest difference over each row's 262,144 logits and the median difference on
the reference row's top 8 -- the ids a sampler chooses among. The verifier's replay of an honest sampled
result can only be as exact as these differences allow (docs/performance.md, "Verification over many results").
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtimes.inference.registry import ModelHashes, ensure_packaged_model

PROMPT = b"The history of the printing press begins in the fifteenth century, when a goldsmith named"
Rows = list[npt.NDArray[np.float32]]


class Shapes:
    """One loaded model, contexts made like the batch engine's (one sequence's cells each, no unified cache)."""

    def __init__(self, model_path: Path, tokens: int, seed: int) -> None:
        import llama_cpp

        self.llama: Any = llama_cpp
        self.llm: Any = llama_cpp.Llama(model_path=str(model_path), n_ctx=1024, n_batch=512, n_ubatch=512,
                                        n_threads=1, n_threads_batch=1, seed=seed, verbose=False, swa_full=False)
        self.n_vocab = int(self.llm.n_vocab())
        self.prompt: list[int] = self.llm.tokenize(PROMPT, add_bos=True)
        generated: list[int] = []
        for token in self.llm.generate(self.prompt, temp=0.8, top_k=40):
            generated.append(int(token))
            if len(generated) == tokens:
                break
        self.seq = self.prompt + generated
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)

    def context(self, sequences: int) -> Any:
        base = self.llm.context_params
        params = type(base).from_buffer_copy(base)
        params.n_ctx, params.n_seq_max, params.n_batch, params.n_ubatch = 512 * sequences, sequences, 512, 512
        params.n_threads = params.n_threads_batch = 1
        params.kv_unified, params.swa_full = False, False
        return self.llama.llama_init_from_model(self.llm.model, params)

    def run(self, ctx: Any, rows: Sequence[tuple[int, int, int, bool]]) -> Rows:
        """Decode ``rows`` (token, position, sequence, wants logits) as one batch; the wanted rows' logits."""
        batch = self.batch
        batch.n_tokens = len(rows)
        for i, (token, pos, seq, wants) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, wants
            batch.seq_id[i][0] = seq
        if self.llama.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return [np.ctypeslib.as_array(self.llama.llama_get_logits_ith(ctx, i), shape=(self.n_vocab,)).copy()
                for i, row in enumerate(rows) if row[3]]

    def prefill(self, splits: Sequence[int] = ()) -> Rows:
        """The continuation's rows from prefills cut at ``splits`` (none: one batch, as the verifier does)."""
        ctx, first, out = self.context(1), len(self.prompt) - 1, []
        cuts = [0, *splits, len(self.seq) - 1]
        for a, b in itertools.pairwise(cuts):
            out += self.run(ctx, [(self.seq[i], i, 0, i >= first) for i in range(a, b)])
        self.llama.llama_free(ctx)
        return out

    def decode(self, others: int) -> Rows:
        """The prompt prefilled, then one token per call, beside ``others`` sequences decoding the same."""
        ctx, first, streams = self.context(others + 1), len(self.prompt) - 1, range(others + 1)
        out = self.run(ctx, [(t, i, s, i == first and s == 0) for s in streams for i, t in enumerate(self.prompt)])
        for j in range(len(self.prompt), len(self.seq) - 1):
            out += self.run(ctx, [(self.seq[j], j, s, s == 0) for s in streams])[:1]
        self.llama.llama_free(ctx)
        return out


def compare(name: str, rows: Rows, reference: Rows) -> None:
    whole = [float(np.max(np.abs(a - b))) for a, b in zip(reference, rows, strict=True)]
    top = [float(np.median(np.abs(a[ids] - b[ids])))
           for a, b in zip(reference, rows, strict=True) for ids in [np.argsort(a)[-8:]]]
    same = sum(int(np.argmax(a) == np.argmax(b)) for a, b in zip(reference, rows, strict=True))
    print(f"  {name:44s} top-8 median {np.median(top):.4f}; whole row max: median {np.median(whole):.3f}, "
          f"largest {max(whole):.3f}; same argmax {same}/{len(rows)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = ensure_packaged_model(root / "models", ModelHashes(root / "hashes.json")).path
        shapes = Shapes(model, args.tokens, args.seed)
        prefill = shapes.prefill()
        lone = shapes.decode(0)
        print(f"{args.tokens} sampled tokens after a {len(shapes.prompt)}-token prompt, against one prefill:")
        compare("the same prefill again", shapes.prefill(), prefill)
        compare("a prefill split in three", shapes.prefill((len(shapes.prompt) + 7, len(shapes.prompt) + 20)),
                prefill)
        compare("one token per decode (a worker)", lone, prefill)
        print("against one token per decode:")
        compare("one token per decode, beside 1 other sequence", shapes.decode(1), lone)
        compare("one token per decode, beside 3 other sequences", shapes.decode(3), lone)


if __name__ == "__main__":
    main()
