"""A quick look is quick (a one-line answer stops at its \\boxed{}, the bar moves per problem) and a run is quiet
(DeepSpeed's CPU notice, transformers' checkpointing renames, a line per cloud batch and W&B's banner are gone)."""

import logging
import warnings

import torch
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

from core.logs import setup_logging
from envs.arithmetic import make_problems
from envs.route import RouteEnv
from evaluation.passes import run_device
from policies.device import load_tokenizer
from policies.generation import HFGenerator, boxed_answer


class _Force(LogitsProcessor):
    """Every row writes ``script`` (token ids) from position ``start`` on, then the filler token (never EOS)."""

    def __init__(self, script, start, filler):
        self.script, self.start, self.filler = script, start, filler

    def __call__(self, input_ids, scores):
        k = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, -1e9)
        forced[:, self.script[k] if k < len(self.script) else self.filler] = 0.0
        return forced


def test_boxed_answer_stops_right_after_the_first_complete_box(tiny_model_dir):
    assert boxed_answer("3 + 4 = 7. \\boxed{7}") and boxed_answer("\\boxed{\\frac{1}{2}}")
    assert not boxed_answer("\\boxed{\\frac{1}{2}") and not boxed_answer("no answer {yet}")
    tok = load_tokenizer(tiny_model_dir)
    gen = HFGenerator(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok, min_shared_prefix=0)
    ctx = [tok("abc", add_special_tokens=False)["input_ids"]]
    script = tok("so \\boxed{42} and then more chatter", add_special_tokens=False)["input_ids"]
    force = LogitsProcessorList([_Force(script, len(ctx[0]), tok("z", add_special_tokens=False)["input_ids"][0])])
    (out,) = gen.extend(ctx, 40, temperature=0.0, stop=boxed_answer, logits_processor=force)
    assert tok.decode(out.ids).strip().endswith("\\boxed{42}") and out.reason == "stop"
    (out,) = gen.extend(ctx, 40, temperature=0.0, logits_processor=force)  # without the stop: to the cap
    assert len(out.ids) == 40 and out.reason == "length"


def test_the_device_pass_reports_each_problem_as_it_finishes(tiny_model_dir, monkeypatch):
    tok = load_tokenizer(tiny_model_dir)
    gen = HFGenerator(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok)
    env = RouteEnv("arithmetic", tok, cloud=None)
    problems = make_problems(5, seed=1, levels=["1+1"])
    updates = []
    import evaluation.passes as passes

    class Bar:
        def __init__(self, *a, **k):
            pass

        def update(self, n):
            updates.append(n)

        def close(self):
            pass

    monkeypatch.setattr(passes, "tqdm", Bar)
    rows = run_device(env, gen, problems, batch_size=32, max_new_tokens=6, stop=boxed_answer)
    assert len(rows) == 5 and updates == [1] * 5  # one step per problem, not one per 32-problem batch


def test_default_logging_drops_deepspeeds_cpu_notice_and_the_checkpointing_renames(capsys):
    deepspeed = logging.getLogger("DeepSpeed")
    handler = logging.StreamHandler()
    deepspeed.addHandler(handler)
    try:
        setup_logging(verbose=False)
        deepspeed.warning(
            "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."
        )
        deepspeed.warning("a DeepSpeed warning that matters")
        err = capsys.readouterr().err
        assert "Setting accelerator to CPU" not in err and "a DeepSpeed warning that matters" in err
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            setup_logging(verbose=False)  # after simplefilter: its filters come first
            warnings.warn(
                "`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1
            )
            warnings.warn("some other FutureWarning", FutureWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == ["some other FutureWarning"]
    finally:
        deepspeed.removeHandler(handler)
        setup_logging(verbose=True)
        logging.getLogger().setLevel(logging.WARNING)


def test_a_cloud_batch_is_a_debug_line_and_an_evaluation_sums_it_up_once(tmp_path, caplog):
    from evaluation.protocol import cloud_summary
    from policies.cloud import SimulatedCloud
    from policies.cloud.cache import CachedCloud

    cloud = CachedCloud(SimulatedCloud(accuracy=1.0), str(tmp_path / "c.sqlite"))
    problems = make_problems(4, seed=2, levels=["1+1"])
    before = cloud.usage()
    with caplog.at_level(logging.INFO, logger="policies.cloud"):
        cloud.answer_many(problems[:3])
        cloud.answer_many(problems)
    assert not caplog.records
    assert cloud_summary(cloud, before).startswith("4 new answers") and "3 from the cache" in cloud_summary(
        cloud, before
    )


def test_wandb_is_silent_unless_asked(monkeypatch):
    from rl.trl_run import wandb_offline_unless_configured

    monkeypatch.delenv("WANDB_SILENT", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb_offline_unless_configured()
    import os

    assert os.environ["WANDB_SILENT"] == "true"
    monkeypatch.setenv("WANDB_SILENT", "false")
    wandb_offline_unless_configured()
    assert os.environ["WANDB_SILENT"] == "false"
