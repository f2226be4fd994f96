"""One ``rl.trainer.policy_update`` on fixed rewards, then save the weights: run alone or under ``accelerate launch``.

    python tests/scripts/one_update.py MODEL_DIR OUT.safetensors [section.key=value ...]
    accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 2 tests/scripts/one_update.py ...

The rewards are fixed so the batch shape is known: group 1 ``[1, 1, .4, .4, .4, 0, 0, 0]`` (mean .4: three members
have zero advantage) and group 2 ``[1, 0, 0, 0, 0, 0, 0, 0]``: 5 + 8 = 13 sequences with a non-zero coefficient,
odd and not a multiple of G, so 2 processes score 7 and 6 of them (4 and 3 micro-batches of 2).
"""

import sys

import torch
from accelerate.utils import set_seed
from safetensors.torch import save_file

from core.problem import Problem
from envs.rollout import Group, Rollout
from policies.device import load_device_model
from policies.generation import Sample
from rl import trainer
from settings import load_config

REWARDS = [[1.0, 1.0, 0.4, 0.4, 0.4, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]


def main(model_dir: str, out: str, overrides: list[str]) -> None:
    cfg = load_config(
        None, [f"model.name_or_path={model_dir}", "train.micro_batch_size=2", "train.learning_rate=1e-2", *overrides]
    )
    accelerator = trainer.make_accelerator(cfg)
    set_seed(0)
    model, tok = load_device_model(cfg.model)
    if accelerator.distributed_type == trainer.DistributedType.DEEPSPEED:
        accelerator.state.deepspeed_plugin.deepspeed_config["gradient_clipping"] = cfg.train.max_grad_norm
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.learning_rate)
    model, optimizer = accelerator.prepare(model, optimizer)
    groups = []
    for g, rewards in enumerate(REWARDS):
        prompt = tok(f"What is {g} + 3?", add_special_tokens=False)["input_ids"]
        rolls = [
            Rollout(
                Sample(prompt, tok(f"so {g}{i} {i}", add_special_tokens=False)["input_ids"], "", False),
                False,
                None,
                False,
            )
            for i in range(len(rewards))
        ]
        groups.append(Group(Problem(f"p{g}", "q", "1"), rolls, rewards=list(rewards)))
    loss = trainer.policy_update(model, optimizer, accelerator, groups, cfg, tok.pad_token_id)
    state = accelerator.get_state_dict(model)  # ZeRO-3: gathered from every process's shard
    if accelerator.is_main_process:
        save_file({k: v.detach().float().clone() for k, v in state.items()}, out, metadata={"loss": repr(loss)})
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
