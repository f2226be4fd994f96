"""scripts/export_gguf.py: a policy written to GGUF and read back through transformers' GGUF loader answers as the
original does (the tiny model of conftest.py, its training prompts, greedy).

Tolerance: f32 is exact (every logit equal); f16 rounds each weight matrix to 11 significant bits, so the logits move
by about 1e-4 here, and the greedy answers must still be the same tokens on these prompts (a greedy token can flip
only where the two best logits are that close).  Quantised types (q8_0, q4) are not exported: they move logits by
1e-2 and more, and would be checked by answer agreement rate on a held-out set, not token equality.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from envs.route import RouteEnv
from policies.cloud import CachedCloud, SimulatedCloud
from policies.device import load_tokenizer
from policies.generation import HFGenerator
from scripts import export_gguf
from serving.policy import served_problem

QUESTIONS = ["What is 3 + 4?", "What is 37 * 46?", "What is 120 - 75?", "What is 9 * 9?", "What is 1000 + 1?"]


@pytest.mark.parametrize("dtype, max_logit_diff", [("f32", 0.0), ("f16", 1e-2)])
def test_exported_gguf_gives_the_same_greedy_answers(tiny_model_dir, tmp_path, dtype, max_logit_diff):
    out = tmp_path / f"tiny-{dtype}.gguf"
    assert export_gguf.main([tiny_model_dir, "--out", str(out), "--dtype", dtype]) == 0
    tok = load_tokenizer(tiny_model_dir)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name, dtype=torch.float32).eval()
    back_tok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=out.name)
    env = RouteEnv("arithmetic", tok, CachedCloud(SimulatedCloud(), None), few_shot=False)
    prompts = [env.prompt(served_problem(q)) for q in QUESTIONS]
    for p in prompts:  # the file's tokenizer splits the training prompt as the checkpoint's does
        assert back_tok(p, add_special_tokens=False)["input_ids"] == tok(p, add_special_tokens=False)["input_ids"]
    want = HFGenerator(original, tok, min_shared_prefix=0).generate(prompts, temperature=0.0, max_new_tokens=16)
    got = HFGenerator(back, back_tok, min_shared_prefix=0).generate(prompts, temperature=0.0, max_new_tokens=16)
    assert [g[0].completion_ids for g in got] == [w[0].completion_ids for w in want]
    assert [g[0].text for g in got] == [w[0].text for w in want]
    ids = torch.tensor([tok(prompts[1], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        diff = (original(ids).logits - back(ids).logits).abs().max().item()
    assert diff <= max_logit_diff


def test_f16_is_half_the_size_and_bad_input_is_refused(tiny_model_dir, tmp_path, capsys):
    sizes = {}
    for dtype in ("f32", "f16"):
        out = tmp_path / f"m-{dtype}.gguf"
        assert export_gguf.main([tiny_model_dir, "--out", str(out), "--dtype", dtype]) == 0
        sizes[dtype] = out.stat().st_size
    assert sizes["f16"] < 0.75 * sizes["f32"]  # the matrices halve; norms, tokenizer and header do not
    assert export_gguf.main([str(tmp_path / "missing"), "--out", str(tmp_path / "x.gguf")]) == 2
    assert "not a folder" in capsys.readouterr().err
