"""The three filters of cloud data augmentation (CDCDA-PLM, seed 004 §3 "Synthetic data selection", eqs. 2-4).

    kept, stats = filter_pairs(candidates, cfg.sft, check_answers=verifier, nli=NLIScorer(path) or None)

A candidate is a synthetic pair (x_syn, y_syn) written by the cloud for a real example (x, y).
It is kept only if it passes all three, applied in this order:

1. Semantic consistency (eq. 2).  The paper asks an NLI model for entailment in both directions,
   M_NLI(x ⇒ x_syn) >= ε_scf and M_NLI(x_syn ⇒ x) >= ε_scf.  Here that check runs when
   ``sft.nli_model`` names a local NLI classifier (none ships offline).  For math-like tasks the
   content that must stay consistent is the answer, so ``sft.verify_answers`` also checks that the
   response's final answer is right with the project's graders (``AnswerVerifier``): the arithmetic
   ladder by exact evaluation of the synthetic question, Countdown by the equation checker, MATH by
   agreement with an independent cloud solution of the synthetic problem.
2. Token diversity (eq. 3): ROUGE-L(x, x_syn) <= ε_tdf (``sft.rouge_l_max``; the ``rouge-score``
   package, F-measure), so near-copies of the original input are dropped.
3. Length ratio (eq. 4): ε_min <= len(x_syn)/len(x) <= ε_max (``sft.length_ratio_min/max``, in
   whitespace words).  The paper checks the input; the response is the training target here, so
   len(y_syn)/len(y) must lie in the same range too.

``stats`` says how many candidates each filter removed (in order, so they add up to the drop) and
how many each would fail on its own.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from core.problem import Problem
from policies.calculator import answer_query
from rewards import countdown as countdown_grader
from rewards.math_grader import extract_answer, grade, is_correct

log = logging.getLogger(__name__)

FILTERS = ("semantic", "diversity", "length")


@dataclass
class Candidate:
    """A synthetic pair and the real example it was made from."""

    source_x: str
    source_y: str
    x: str
    y: str
    source_uid: str = ""
    level: int = 0
    removed_by: str | None = None  # set by filter_pairs: the first filter it failed, None if kept


# ---- filter 2: token diversity -------------------------------------------------------------------

_SCORER = None


def rouge_l(reference: str, candidate: str) -> float:
    """ROUGE-L F-measure of ``candidate`` against ``reference`` (rouge-score; lower-cased words, punctuation
    dropped)."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"])
    return _SCORER.score(reference, candidate)["rougeL"].fmeasure


# ---- filter 3: length ratio ----------------------------------------------------------------------


def length_ratio(reference: str, candidate: str) -> float:
    """len(candidate) / len(reference) in whitespace words (an empty reference counts as one word)."""
    return len(candidate.split()) / max(len(reference.split()), 1)


def length_ok(c: Candidate, lo: float, hi: float) -> bool:
    return lo <= length_ratio(c.source_x, c.x) <= hi and lo <= length_ratio(c.source_y, c.y) <= hi


# ---- filter 1: semantic consistency --------------------------------------------------------------


class NLIScorer:
    """An NLI sequence classifier (e.g. a WANLI/MNLI RoBERTa, as the paper uses): P(entailment | premise, hypothesis).

    ``model`` is a local directory or hub id; the entailment class is found in ``config.id2label``."""

    def __init__(self, model: str, batch_size: int = 32):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForSequenceClassification.from_pretrained(model).eval()
        except OSError as e:
            raise OSError(
                f"sft.nli_model={model!r} could not be loaded ({e}). Point it at a local NLI classifier directory, "
                "or set sft.nli_model='' to check semantic consistency by answers only."
            ) from None
        labels = {i: str(name).lower() for i, name in self.model.config.id2label.items()}
        found = [i for i, name in labels.items() if name.startswith("entail")]
        if not found:
            raise ValueError(
                f"sft.nli_model={model!r} has no entailment class in config.id2label={self.model.config.id2label}; "
                "use an NLI classifier whose labels include 'entailment'."
            )
        self.entail, self.batch_size, self._torch = int(found[0]), batch_size, torch

    def __call__(self, premises: list[str], hypotheses: list[str]) -> list[float]:
        out = []
        with self._torch.no_grad():
            for s in range(0, len(premises), self.batch_size):
                enc = self.tokenizer(
                    premises[s : s + self.batch_size],
                    hypotheses[s : s + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                )
                probs = self.model(**enc).logits.softmax(-1)[:, self.entail]
                out += probs.tolist()
        return out


_NUMBERS = re.compile(r"numbers\s*\[([^\]]*)\]", re.IGNORECASE)
_TARGET = re.compile(r"equals\s*(-?\d+)", re.IGNORECASE)


class AnswerVerifier:
    """Is a synthetic response's final answer right?  ``verifier(candidates) -> list[bool]``.

    * arithmetic: the question is evaluated exactly (``policies/calculator.py``), the response graded against it;
    * countdown: the numbers and target are read from the question, the ``<answer>`` equation checked exactly;
    * math: the cloud solves the synthetic problem on its own (one cached call each) and the two final answers
      must agree (math-verify, ``rewards/math_grader.py``).  With no cloud, math pairs cannot be verified and fail.
    """

    def __init__(self, template: str, cloud=None):
        self.template, self.cloud = template, cloud

    def __call__(self, cands: list[Candidate]) -> list[bool]:
        if self.template == "arithmetic":
            return [self._arithmetic(c) for c in cands]
        if self.template == "countdown":
            return [self._countdown(c) for c in cands]
        return self._math(cands)

    @staticmethod
    def _arithmetic(c: Candidate) -> bool:
        gold = answer_query(c.x)
        return gold is not None and grade(gold, c.y)[1]

    @staticmethod
    def _countdown(c: Candidate) -> bool:
        m, t = _NUMBERS.search(c.x), _TARGET.search(c.x)
        if not (m and t):
            return False
        try:
            numbers = [int(v) for v in m.group(1).split(",")]
        except ValueError:
            return False
        return countdown_grader.grade(numbers, int(t.group(1)), c.y)[1]

    def _math(self, cands: list[Candidate]) -> list[bool]:
        if self.cloud is None or not cands:
            return [False] * len(cands)
        probs = [
            Problem(uid="verify-" + hashlib.sha256(c.x.encode()).hexdigest()[:24], question=c.x, answer="")
            for c in cands
        ]
        texts = [r.text for r in self.cloud.answer_many(probs)]
        out = []
        for c, text in zip(cands, texts):
            gold = extract_answer(text)
            out.append(gold is not None and is_correct(gold, extract_answer(c.y)))
        return out


def semantic_ok(
    cands: list[Candidate], threshold: float, check_answers: Callable | None = None, nli: Callable | None = None
) -> list[bool]:
    """Eq. 2 (NLI both ways >= threshold, when an NLI model is given) and the answer check (when given)."""
    ok = [True] * len(cands)
    if check_answers is not None:
        ok = [a and b for a, b in zip(ok, check_answers(cands))]
    if nli is not None and cands:
        fwd = nli([c.source_x for c in cands], [c.x for c in cands])  # M_NLI(x => x_syn)
        bwd = nli([c.x for c in cands], [c.source_x for c in cands])  # M_NLI(x_syn => x)
        ok = [o and f >= threshold and b >= threshold for o, f, b in zip(ok, fwd, bwd)]
    return ok


# ---- all three -----------------------------------------------------------------------------------


def filter_pairs(cands: list[Candidate], cfg, check_answers: Callable | None = None, nli: Callable | None = None):
    """(kept candidates, stats): semantic consistency, then token diversity, then length ratio (see module doc).

    ``cfg`` is the ``sft`` config section (``scf_threshold``, ``rouge_l_max``, ``length_ratio_min/max``)."""
    passes = {
        "semantic": semantic_ok(cands, cfg.scf_threshold, check_answers, nli),
        "diversity": [rouge_l(c.source_x, c.x) <= cfg.rouge_l_max for c in cands],
        "length": [length_ok(c, cfg.length_ratio_min, cfg.length_ratio_max) for c in cands],
    }
    removed = dict.fromkeys(FILTERS, 0)
    kept = []
    for i, c in enumerate(cands):
        failed = next((f for f in FILTERS if not passes[f][i]), None)
        c.removed_by = failed
        if failed is None:
            kept.append(c)
        else:
            removed[failed] += 1
    stats = {
        "candidates": len(cands),
        "kept": len(kept),
        "removed": removed,  # by each filter in order: they add up to candidates - kept
        "failed_alone": {f: passes[f].count(False) for f in FILTERS},  # each filter applied on its own
        "semantic_checks": [n for n, on in (("answer", check_answers is not None), ("nli", nli is not None)) if on],
        "thresholds": {
            "scf": cfg.scf_threshold,
            "rouge_l_max": cfg.rouge_l_max,
            "length_ratio": [cfg.length_ratio_min, cfg.length_ratio_max],
        },
    }
    return kept, stats
