"""The test-time budget cap and the baselines computed from one set of device outputs."""

from envs.problem import Problem
from envs.route import RouteEnv
from eval import evaluate, format_table
from policies.cloud import CachedCloud, SimulatedCloud
from policies.generation import Sample

ESC = "<unknown> I need external assistance </unknown>"


class ScriptedGenerator:
    """Returns fixed device outputs (the test double stands in for the model, not for the code under test)."""

    def __init__(self, outputs):
        self.outputs = outputs

    def generate(self, prompts, n=1, **kw):
        return [[Sample([], [], self.outputs[p], False)] for p in prompts]


class PlainTok:
    chat_template = None


def test_budget_cap_sends_escalations_in_order_and_device_answers_the_rest():
    probs = [Problem(f"p{i}", f"What is {i} + 1?", str(i + 1), level=1 + i % 2) for i in range(10)]
    env = RouteEnv("arithmetic", PlainTok(), CachedCloud(SimulatedCloud(accuracy=1.0), None), few_shot=False)
    outputs = {}
    for i, p in enumerate(probs):
        # problems 0..5 escalate; 6..9 answer, 6 and 7 correctly
        text = ESC if i < 6 else (f"\\boxed{{{i + 1}}}" if i < 8 else "\\boxed{0}")
        outputs[env.prompt(p)] = text
    rows, records = evaluate(env, ScriptedGenerator(outputs), probs, budget=0.3, batch_size=4, progress=False)
    policy, never, rand = rows
    assert policy["cloud_calls"] == 3  # floor(0.3 * 10)
    assert [r["sent_to_cloud"] for r in records[:6]] == [True, True, True, False, False, False]
    # cloud right on 0,1,2; device right on 6,7; escalations 3,4,5 beyond the cap are graded as device answers (wrong)
    assert policy["overall_acc"] == 0.5 and policy["device_acc"] == 2 / 7
    assert policy["wanted_offload_rate"] == 0.6
    assert never["overall_acc"] == 0.2 and never["offload_rate"] == 0.0
    assert rand["cloud_calls"] == 3
    assert "policy" in format_table(rows)
