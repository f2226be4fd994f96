"""LSRP's metrics (§3.4, §4.1.4) and the score S that picks strategies and preferences.

    udrr(user_data, output)                       eq. 15: |W(D_u) ∩ W(y)| / |W(D_u)|
    perplexities(model, tok, outputs)             eq. 16: exp(-1/N Σ log p(y_i | y_<i)) under the device model
    flesch(output)                                Flesch reading ease (textstat; Appendix B.1)
    Judge(cloud).scores(pairs, outputs)           Q-A Rel. (eq. 14) and Persona, 0-10, from an LLM judge
    weights = fit_score_weights(qa, udrr, ppl)    eq. 18: NSGA-II over the weights, knee of the Pareto front
    weights.score(qa, udrr, ppl)                  eq. 17: S = w1·QA-Rel + w2·UDRR − w3·PPL

Choices the paper leaves open, made explicit here:
* Words (eq. 15) are the lowercased ``\\w+`` runs of the text, as sets (unique words).
* PPL (eq. 16) conditions each output token on the output tokens before it only (not on the prompt),
  starting after the tokenizer's BOS token when it has one; it measures the fluency of the text itself.
  An empty output gets the vocabulary size (the perplexity of a uniform guess).
* S mixes three metrics on different scales, so each enters min-max normalised with the bounds of the
  synthetic (index) records, fixed once and stored with the weights; the weights sum to 1.
* NSGA-II (eq. 18) searches the weight vector w; the objectives of a w are the means, over the
  synthetic user-task pairs, of (−QA-Rel, −UDRR, PPL) of the output that S_w selects for each pair
  (eq. 5). The knee of the Pareto front is the point farthest from the hyperplane through the
  front's extreme points (each objective's largest value), on the ideal point's side (Zhang et al. 2015,
  KnEA, as its reference code does), in the front's own min-max normalised objective space.
* The judge: any cloud backend (``hf``, ``openai``) through the cached cloud; its reply is the score when it
  has one of the forms of ``parse_score``, and an error quoting it otherwise. ``judge="offline"`` scores by
  embedding instead, ``10·max(0, cos(e(a), e(b)))`` (task vs output for Q-A Rel., profile vs output for
  Persona); ``judge_fallback=true`` gives that score to the outputs whose reply had no number. Every score
  carries its source (``llm``, ``offline-embedding`` or ``embedding-fallback``); every table counts them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass

import numpy as np
import torch

from policies.cloud import chat_problem

_WORD = re.compile(r"\w+")


def words(text: str) -> set[str]:
    """W(·) of eq. 15: the set of unique lowercased words."""
    return set(_WORD.findall(text.lower()))


def udrr(user_data: str, output: str) -> float:
    """User Data Reference Rate (eq. 15): the share of the user data's unique words that the output uses."""
    ref = words(user_data)
    return len(ref & words(output)) / len(ref) if ref else 0.0


def flesch(text: str) -> float:
    """Flesch reading ease (textstat; higher = easier). 0 for a text without words."""
    import textstat

    return float(textstat.flesch_reading_ease(text)) if words(text) else 0.0


@torch.no_grad()
def perplexities(model, tokenizer, texts: list[str], batch_size: int = 16) -> list[float]:
    """Eq. 16 for each text under ``model``: exp of the mean negative log-likelihood of its tokens.

    Token i is conditioned on tokens < i of the same text (after BOS when the tokenizer has one;
    without BOS the first token is context only)."""
    was_training = model.training
    model.eval()
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = [float(len(tokenizer))] * len(texts)
    seqs = [(i, bos + tokenizer(t, add_special_tokens=False)["input_ids"]) for i, t in enumerate(texts)]
    seqs = [(i, s) for i, s in seqs if len(s) >= 2]  # at least one token with a context
    try:
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start : start + batch_size]
            width = max(len(s) for _, s in chunk)
            ids = torch.tensor([s + [pad] * (width - len(s)) for _, s in chunk], device=model.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for _, s in chunk], device=model.device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            m = mask[:, 1:].float()
            mean_nll = (nll * m).sum(1) / m.sum(1)
            for (i, _), v in zip(chunk, mean_nll.tolist()):
                out[i] = math.exp(v)
    finally:
        model.train(was_training)
    return out


# The judge ----------------------------------------------------------------------------------------

QA_REL_PROMPT = (
    "You are a strict evaluator. Rate how relevant the answer is to the user's task, from 0 (unrelated) to "
    "10 (fully answers the task). Reply with the number only.\n\nTask: {task}\n\nAnswer: {output}\n\nScore (0-10):"
)
PERSONA_PROMPT = (
    "You are a strict evaluator. Rate how well the answer is personalised to this user's profile, from 0 "
    "(generic, ignores the user) to 10 (clearly tailored to the user's life, preferences and style). Reply with "
    "the number only.\n\nUser profile: {user_data}\n\nTask: {task}\n\nAnswer: {output}\n\nScore (0-10):"
)
_NUM = r"(10(?:\.0+)?|\d(?:\.\d+)?)"
_SCORE = (
    re.compile(rf"^\W*{_NUM}\W*$"),  # the reply is the number alone: "7", "7.", "**7**"
    re.compile(rf"(?<![\d.]){_NUM}\s*(?:/|out of)\s*10(?!\d)", re.I),  # "7/10", "7 out of 10"
    re.compile(
        rf"\b(?:score|rating|rate it)\W{{0,3}}(?:is\W{{0,3}}|of\W{{0,3}})?{_NUM}(?![\d.]\d)", re.I
    ),  # "Score: 7"
)


def parse_score(reply: str) -> float | None:
    """A judge's 0-10 score, only in an unambiguous form: the number alone, "N/10", "N out of 10" or "Score: N".

    Anything else is None (the record then falls back to the offline score): a small judge often answers with a
    numbered list ("1. Plan ...") or half a sentence ("Your answer is 0 out of"), which are not scores."""
    for pattern in _SCORE:
        m = pattern.search(reply.strip())
        if m:
            return float(m.group(1))
    return None


def judge_messages(prompt: str, **fields) -> list[dict]:
    return [{"role": "user", "content": prompt.format(**fields)}]


class JudgeReplyError(ValueError):
    """A judge reply that is not a 0-10 score, with ``lsrp.judge_fallback`` off."""


class Judge:
    """Q-A Rel. and Persona scores (0-10): an LLM judge through a cached cloud, or the offline embedding judge.

    ``cloud`` is a ``CachedCloud`` (any backend; every call is cached, so reruns resume) or None for the
    offline judge (``lsrp.judge=offline``); ``embed(texts) -> unit vectors`` gives the embedding scores, which
    are always computed too (``*_emb``), so a weak LLM judge can be cross-checked.  A reply that ``parse_score``
    cannot read is an error quoting it, unless ``fallback`` (``lsrp.judge_fallback=true``): then that output
    takes its embedding score, with the source ``embedding-fallback``, and every table counts such scores."""

    def __init__(self, cloud, embed, output_chars: int = 2000, fallback: bool = False):
        self.cloud, self.embed, self.output_chars, self.fallback = cloud, embed, output_chars, fallback

    def scores(self, tasks: list[str], user_data: list[str], outputs: list[str]) -> list[dict]:
        outs = [o[: self.output_chars] for o in outputs]
        e_out, e_task, e_user = (np.asarray(self.embed(x)) for x in (outs, tasks, user_data))
        qa_emb = 10 * np.clip((e_out * e_task).sum(1), 0, 1)
        pe_emb = 10 * np.clip((e_out * e_user).sum(1), 0, 1)
        rows = [{"qa_rel_emb": float(a), "persona_emb": float(b)} for a, b in zip(qa_emb, pe_emb)]
        if self.cloud is None:  # the offline judge, chosen: every score is the embedding one
            for row in rows:
                row.update(qa_rel=row["qa_rel_emb"], qa_rel_source="offline-embedding")
                row.update(persona=row["persona_emb"], persona_source="offline-embedding")
            return rows
        qa_p = [chat_problem(judge_messages(QA_REL_PROMPT, task=t, output=o), "judge") for t, o in zip(tasks, outs)]
        pe_p = [
            chat_problem(judge_messages(PERSONA_PROMPT, task=t, user_data=u, output=o), "judge")
            for t, u, o in zip(tasks, user_data, outs)
        ]
        replies = [r.text for r in self.cloud.answer_many(qa_p + pe_p)]
        for metric, part in (("qa_rel", replies[: len(outs)]), ("persona", replies[len(outs) :])):
            for row, reply in zip(rows, part):
                score = parse_score(reply)
                if score is not None:
                    row[metric], row[f"{metric}_source"] = score, "llm"
                elif self.fallback:
                    row[metric], row[f"{metric}_source"] = row[f"{metric}_emb"], "embedding-fallback"
                else:
                    raise JudgeReplyError(
                        f"the judge's {metric} reply is not a 0-10 score: {reply[:300]!r}. Use a judge that follows "
                        "the prompt (lsrp.judge_model=<model>), lsrp.judge=offline for embedding scores throughout, "
                        "or lsrp.judge_fallback=true to give such outputs their embedding score (counted in every "
                        "table)."
                    )
        return rows


def judge_caption(records: list[dict]) -> str:
    """The line printed under every LSRP table: where its Q-A Rel. and Persona scores came from."""
    n = len(records)
    count = {
        m: {src: sum(r[f"{m}_source"] == src for r in records) for src in ("llm", "embedding-fallback")}
        for m in ("qa_rel", "persona")
    }
    if n and all(r["qa_rel_source"] == "offline-embedding" for r in records):
        return f"Judge: all {n} outputs scored by embedding similarity (lsrp.judge=offline), no LLM judge."
    text = (
        f"Judge: of {n} outputs, Q-A Rel. by the LLM judge {count['qa_rel']['llm']}, Persona by the LLM judge "
        f"{count['persona']['llm']}"
    )
    fb = count["qa_rel"]["embedding-fallback"], count["persona"]["embedding-fallback"]
    if any(fb):
        text += f"; embedding fallback for unparseable replies (lsrp.judge_fallback=true): Q-A {fb[0]}, Persona {fb[1]}"
    return text + "."


# Score S and its weights --------------------------------------------------------------------------

METRICS = ("qa_rel", "udrr", "ppl")  # the three terms of eq. 17, in order


@dataclass
class ScoreWeights:
    """S = w1·n(QA-Rel) + w2·n(UDRR) − w3·n(PPL) (eq. 17), n = min-max with the bounds ``lo``/``hi`` of the index
    records."""

    w: list[float]  # (w1, w2, w3), non-negative, summing to 1
    lo: list[float]
    hi: list[float]
    front: list[list[float]] | None = None  # the Pareto front (mean −QA, −UDRR, PPL of the selections), for the record

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """(..., 3) raw metrics -> min-max normalised with the stored bounds (a zero range maps to 0)."""
        lo, hi = np.asarray(self.lo), np.asarray(self.hi)
        return (np.asarray(x, dtype=float) - lo) / np.where(hi > lo, hi - lo, 1.0)

    def score(self, qa_rel, udrr_, ppl) -> np.ndarray:
        n = self.normalise(np.stack([np.asarray(qa_rel, float), np.asarray(udrr_, float), np.asarray(ppl, float)], -1))
        w1, w2, w3 = self.w
        return w1 * n[..., 0] + w2 * n[..., 1] - w3 * n[..., 2]

    def score_record(self, r: dict) -> float:
        return float(self.score(r["qa_rel"], r["udrr"], r["ppl"]))

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(asdict(self), f, indent=2)

    @classmethod
    def load(cls, path: str) -> ScoreWeights:
        with open(path) as f:
            return cls(**json.load(f))


def knee_point(front: np.ndarray) -> int:
    """Index of the knee of a Pareto front to MINIMISE (rows = points, columns = objectives).

    Zhang, Tian and Jin 2015 (KnEA), as its reference code (PlatEMO) computes it: normalise the front to [0, 1]
    per objective; the extreme points are the points with the LARGEST value of each objective (objective j takes
    the next largest when that point is already an extreme of an earlier objective); the knee is the point
    farthest from the hyperplane through them, on the ideal point's side: argmax (1 − n·h)/‖h‖ with n·h = 1 the
    hyperplane. With two objectives the largest-f1 point is the smallest-f2 one, so only fronts of three or more
    objectives see the difference from a hyperplane through the per-objective minima.  A degenerate hyperplane
    (singular extremes) falls back to the point nearest the ideal point."""
    f = np.asarray(front, dtype=float)
    if len(f) == 1:
        return 0
    lo, hi = f.min(0), f.max(0)
    n = (f - lo) / np.where(hi > lo, hi - lo, 1.0)
    m = n.shape[1]
    extremes: list[int] = []
    for j in range(m):  # objective j's largest point not yet taken (ties: the earlier row, as MATLAB's sort)
        order = np.argsort(-n[:, j], kind="stable")
        extremes.append(int(next((i for i in order if i not in extremes), order[0])))
    e = n[extremes]
    if len(set(extremes)) == m and abs(np.linalg.det(e)) > 1e-12:
        h = np.linalg.solve(e, np.ones(m))  # the hyperplane h·x = 1 through the extremes
        dist = (1.0 - n @ h) / np.linalg.norm(h)  # > 0 on the ideal (origin) side
        return int(np.argmax(dist))
    return int(np.argmin(np.linalg.norm(n, axis=1)))


def selection_objectives(w: np.ndarray, norm: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Eq. 18 for a batch of weight vectors: (−mean QA-Rel, −mean UDRR, mean PPL) of the S_w-best output per pair.

    ``w`` (P, 3) weights; ``norm``/``raw`` (pairs, strategies, 3) normalised / raw metrics."""
    w = w / np.clip(w.sum(1, keepdims=True), 1e-12, None)
    s = np.einsum("psk,wk->wps", norm * np.array([1.0, 1.0, -1.0]), w)  # S_w of every output
    best = s.argmax(2)  # (W, pairs): eq. 5
    picked = np.take_along_axis(raw[None], best[..., None, None].repeat(3, -1), axis=2)[:, :, 0]  # (W, pairs, 3)
    mean = picked.mean(1)
    return np.stack([-mean[:, 0], -mean[:, 1], mean[:, 2]], 1)


def fit_score_weights(qa_rel, udrr_, ppl, pop_size: int = 40, generations: int = 40, seed: int = 0) -> ScoreWeights:
    """The weights of S (eq. 17) at the knee of the NSGA-II Pareto front of eq. 18.

    Inputs are (pairs, strategies) arrays: the metrics of every strategy's output for every synthetic pair."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import Problem as MooProblem
    from pymoo.optimize import minimize

    raw = np.stack([np.asarray(qa_rel, float), np.asarray(udrr_, float), np.asarray(ppl, float)], -1)
    if raw.ndim != 3 or raw.shape[1] < 2:
        raise ValueError(f"fit_score_weights needs (pairs, strategies>=2) metric arrays, got shape {raw.shape[:-1]}.")
    lo, hi = raw.reshape(-1, 3).min(0), raw.reshape(-1, 3).max(0)
    weights = ScoreWeights([1 / 3] * 3, lo.tolist(), hi.tolist())
    norm = weights.normalise(raw)

    class WeightProblem(MooProblem):
        def __init__(self):
            super().__init__(n_var=3, n_obj=3, xl=1e-3, xu=1.0)

        def _evaluate(self, x, out, *args, **kwargs):
            out["F"] = selection_objectives(np.atleast_2d(x), norm, raw)

    res = minimize(WeightProblem(), NSGA2(pop_size=pop_size), ("n_gen", generations), seed=seed, verbose=False)
    X, F = np.atleast_2d(res.X), np.atleast_2d(res.F)
    _, first = np.unique(np.round(F, 12), axis=0, return_index=True)  # one weight vector per distinct front point
    first = np.sort(first)
    k = first[knee_point(F[first])]
    w = X[k] / X[k].sum()
    weights.w, weights.front = w.tolist(), F[first].tolist()
    return weights
