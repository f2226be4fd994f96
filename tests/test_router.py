"""The router baseline: a real sentence encoder (all-MiniLM-L6-v2, offline package) + logistic regression."""

import numpy as np
import pytest

from envs.arithmetic import make_problems
from policies.router import PromptRouter


@pytest.fixture(scope="module")
def ladder():
    train = make_problems(160, seed=0, levels=["1+1", "3x2"], split="train")
    test = make_problems(40, seed=0, levels=["1+1", "3x2"], split="test")
    return train, test


def test_router_learns_which_prompts_the_device_fails_and_calibrates_to_the_budget(ladder, tmp_path):
    train, test = ladder
    fails = lambda p: p.level == 2  # the device solves one-digit sums and fails 3-digit x 2-digit products  # noqa: E731
    router = PromptRouter().fit([p.question for p in train[:128]], [not fails(p) for p in train[:128]])
    router.calibrate([p.question for p in train[128:]])
    scores = router.score([p.question for p in test])
    hard = np.array([fails(p) for p in test])
    assert scores[hard].min() > scores[~hard].max()  # separable from the prompt alone
    for budget in (0.2, 0.5):
        thr = router.threshold_for(budget)
        share = float(np.mean(router.calib_scores > thr))
        assert abs(share - budget) <= 1 / len(router.calib_scores) + 0.05  # RouteLLM calibration: budget share above it
    path = str(tmp_path / "router.pkl")
    router.save(path)
    again = PromptRouter.load(path)
    assert np.allclose(again.score([p.question for p in test]), scores)
    assert again.threshold_for(0.3) == router.threshold_for(0.3)


def test_router_refuses_rollouts_with_one_outcome(ladder):
    train, _ = ladder
    with pytest.raises(ValueError, match="both outcomes"):
        PromptRouter().fit([p.question for p in train[:10]], [True] * 10)
