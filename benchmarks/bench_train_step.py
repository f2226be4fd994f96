"""Training-step throughput: our GAPG step against TRL ``GRPOTrainer`` (Dr.GRPO), side by side in one process.

    python -m benchmarks.bench_train_step                                  # SmolLM2-135M, configs/cpu_default.yaml
    python -m benchmarks.bench_train_step --model /path/to/model --steps 6 rl.group_size=8 --json out.json

Both trainers get the same model weights (two copies loaded from the same files), the same prompts in the
same order (GAPG's seeded ``problems_for_step`` order; TRL's dataset is those prompts in that order with
its shuffle off), the same G, prompts per step, ``max_new_tokens``, sampling settings, micro-batch,
learning rate and the same simulated cloud.  TRL is built by ``rl.trl_grpo.build_trainer`` (the baseline
that ``rl.trainer=trl_drgrpo`` trains): ``loss_type="dr_grpo"``, ``beta=0``, ``scale_rewards="none"``,
one optimizer step per generation batch.  GAPG runs with ``rl.filtering=false`` and
``rl.rollout_prompts = rl.batch_prompts`` so it trains on the same prompts as TRL (``--filtering`` turns
adaptive filtering back on).

The steps alternate: TRL step k, then GAPG step k on the same prompts, so a machine whose load changes
slows both alike.  The first ``--warmup`` steps of each are not measured.  A step is everything from one
optimizer step to the next: sampling, grading and the cloud, rewards, the update.  The phases:
generation (``HFGenerator.generate`` / TRL ``_generate``), scoring (grading and the cloud: the rest of
``RouteEnv.rollout`` / TRL ``_calculate_rewards``), update (forward, backward, optimizer step), other
(the remainder: GAPG rewards, filtering and the dual; TRL tokenisation, advantages, logging, data loading).

``--fixed-length`` forces every completion to exactly ``max_new_tokens`` tokens in both trainers
(``min_new_tokens``), so they generate and train on the same number of tokens.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from benchmarks.common import (
    Timer,
    add_common_args,
    command_line,
    device_name,
    load_cfg,
    mean_std,
    setup_torch,
    table,
    write_json,
)


def bench_cfg(args, overrides, out_dir):
    cfg = load_cfg(args, overrides, extra=["train.wandb=false", "train.eval_before=false", "train.save_every=0"])
    cfg.rl.filtering = bool(getattr(args, "filtering", False))
    cfg.rl.rollout_prompts = cfg.rl.batch_prompts  # both trainers see exactly the same prompts each step
    cfg.train.output_dir = out_dir
    cfg.train.max_steps = args.warmup + args.steps
    return cfg


def step_problems(cfg, n_steps: int):
    from envs.tasks import load_problems
    from rl.trainer import problems_for_step

    train_problems, _ = load_problems(cfg.task)
    return [problems_for_step(train_problems, k, cfg.rl.batch_prompts, cfg.train.seed) for k in range(n_steps)]


class GapgStepper:
    """train.py's step, phase by phase, with the same functions (rollout, rewards, filtering, update, dual)."""

    def __init__(self, cfg, accelerator, fixed_length: bool = False, generation=None):
        """``generation``: a module with an ``HFGenerator`` (default: policies.generation; ``--against REV`` passes
        that file as it was at revision REV)."""
        import torch

        from envs.simulation import task_cloud
        from policies.device import load_device_model
        from policies.generation import HFGenerator, Sample
        from rl.lagrangian import gamma_controller
        from rl.trainer import make_env
        from settings import rho

        self.cfg, self.accelerator = cfg, accelerator
        model, self.tok = load_device_model(cfg.model)
        T = cfg.rl.max_new_tokens if fixed_length else 0
        opt = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=cfg.train.learning_rate,
            weight_decay=cfg.train.weight_decay,
        )
        self.model, self.opt = accelerator.prepare(model, opt)
        policy = accelerator.unwrap_model(self.model)
        if generation is not None:
            from benchmarks.bench_generation import older_generator

            self.generator = older_generator(generation, policy, self.tok, T)
            old_generate = self.generator.generate

            def generate(*a, **k):  # the older module's Samples as today's (the trainer reads newer fields)
                return [
                    [Sample(s.prompt_ids, s.completion_ids, s.text, s.truncated) for s in g]
                    for g in old_generate(*a, **k)
                ]

            self.generator.generate = generate
        else:
            dtype = None if cfg.rl.rollout_dtype == "policy" else cfg.rl.rollout_dtype
            self.generator = HFGenerator(policy, self.tok, dtype=dtype, min_new_tokens=T)
        self.cloud = task_cloud(cfg.cloud, os.path.join(cfg.train.output_dir, "gapg_cloud.sqlite"))
        self.env = make_env(cfg, self.tok, self.cloud)
        self.dual = gamma_controller(cfg.rl)
        self.rho = rho(cfg.rl.budget, cfg.rl.env)
        self.timer = Timer()
        self.timer.wrap(self.generator, "generate", "generation")

    def step(self, problems) -> dict:
        import torch

        from rl.filtering import select_prompts
        from rl.gapg import group_advantages
        from rl.trainer import policy_update

        cfg, t = self.cfg, self.timer
        t0 = time.perf_counter()
        with t("rollout"):
            groups = self.env.rollout(
                self.generator, problems, cfg.rl.group_size, cfg.rl.temperature, cfg.rl.top_p, cfg.rl.max_new_tokens
            )
        self.env.reward(groups, cfg.reward, self.dual.gamma)
        if cfg.rl.filtering:
            picked, _ = select_prompts(groups, cfg.rl.batch_prompts, self.rho, cfg.rl.d1_rule)
        else:
            picked = list(range(min(len(groups), cfg.rl.batch_prompts)))
        chosen = [groups[i] for i in picked]
        with t("update"):
            loss = (
                policy_update(self.model, self.opt, self.accelerator, chosen, cfg, self.tok.pad_token_id)
                if chosen
                else 0.0
            )
        rolls = [r for g in groups for r in g.rollouts]
        self.dual.update(sum(r.escalated for r in rolls) / max(len(rolls), 1))
        total = time.perf_counter() - t0
        ph = t.take()
        forwarded = 0
        if chosen:
            coefs = group_advantages(torch.tensor([g.rewards for g in chosen], dtype=torch.float32))
            forwarded = int((coefs != 0).sum())
        return {
            "total_s": total,
            "generation_s": ph["generation"],
            "scoring_s": ph["rollout"] - ph["generation"],
            "update_s": ph["update"],
            "other_s": total - ph["rollout"] - ph["update"],
            "samples": len(rolls),
            "completion_tokens": sum(len(r.sample.completion_ids) for r in rolls),
            "sequences_in_update": forwarded,
            "loss": loss,
            "problem_uids": sorted(p.uid for p in problems),
        }


def build_trl(cfg, problems_in_order, fixed_length: bool = False, callbacks=()):
    """The TRL Dr.GRPO trainer of rl/trl_grpo.py on ``problems_in_order`` (no shuffle), and its phase timer."""
    from envs.simulation import task_cloud
    from policies.device import load_device_model
    from rl.trl_grpo import build_trainer, grpo_config

    model, tok = load_device_model(cfg.model)
    targs = grpo_config(cfg)
    targs.shuffle_dataset = False  # step k trains on problems_in_order[k*P:(k+1)*P], GAPG's step-k prompts
    targs.save_strategy = "no"
    if fixed_length:
        targs.generation_kwargs = {"min_new_tokens": cfg.rl.max_new_tokens}
    cloud = task_cloud(cfg.cloud, os.path.join(cfg.train.output_dir, "trl_cloud.sqlite"))
    trainer = build_trainer(cfg, model, tok, cloud, problems_in_order, args=targs, callbacks=callbacks)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (ProgressCallback, PrinterCallback):  # keep the benchmark's own output readable
        trainer.remove_callback(cb)
    timer = Timer()
    timer.wrap(trainer, "_generate", "generation")
    timer.wrap(trainer, "_generate_and_score_completions", "prepare")
    counts = {"completion_tokens": 0, "samples": 0, "uids": set()}
    calc = trainer._calculate_rewards

    def calculate_rewards(inputs, prompts, completions, completion_ids_list):
        counts["completion_tokens"] += sum(len(c) for c in completion_ids_list)
        counts["samples"] += len(completion_ids_list)
        counts["uids"].update(x["uid"] for x in inputs)
        with timer("scoring"):
            return calc(inputs, prompts, completions, completion_ids_list)

    trainer._calculate_rewards = calculate_rewards
    return trainer, timer, counts


def summarise(records: list[dict]) -> dict:
    keys = [
        "total_s",
        "generation_s",
        "scoring_s",
        "update_s",
        "other_s",
        "samples",
        "completion_tokens",
        "sequences_in_update",
    ]
    out = {}
    for k in keys:
        m, s = mean_std([r[k] for r in records])
        out[k] = {"mean": m, "std": s}
    sps = [r["samples"] / r["total_s"] for r in records]
    tps = [r["completion_tokens"] / r["total_s"] for r in records]
    out["samples_per_s"] = dict(zip(("mean", "std"), mean_std(sps)))
    out["tokens_per_s"] = dict(zip(("mean", "std"), mean_std(tps)))
    gtps = [r["completion_tokens"] / r["generation_s"] for r in records if r["generation_s"] > 0]
    out["generation_tokens_per_s"] = dict(zip(("mean", "std"), mean_std(gtps)))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, steps=4, warmup=1)
    ap.add_argument(
        "--fixed-length",
        action="store_true",
        help="every completion exactly rl.max_new_tokens tokens, in both trainers",
    )
    ap.add_argument(
        "--filtering",
        action="store_true",
        help="GAPG with adaptive prompt filtering (off by default: same prompts as TRL)",
    )
    ap.add_argument("--out", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--against", default=None, help="also run GAPG with policies/generation.py of this git revision")
    ap.add_argument("--no-trl", action="store_true", help="GAPG only (with --against: old rollout against new)")
    args, overrides = ap.parse_known_args(argv)
    threads = setup_torch(args)

    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import TrainerCallback

    tmp = args.out or tempfile.mkdtemp(prefix="bench_train_step_")
    cfg = bench_cfg(args, overrides, tmp)
    n = args.warmup + args.steps
    per_step = step_problems(cfg, n)
    set_seed(cfg.train.seed)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # a benchmark run before this one may have set it up
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision)
    steppers = {"GAPG (ours)": GapgStepper(cfg, accelerator, args.fixed_length)}
    if args.against:
        from benchmarks.bench_generation import load_generation_at

        old = load_generation_at(args.against)
        steppers[f"GAPG, rollout @{args.against}"] = GapgStepper(cfg, accelerator, args.fixed_length, old)
    recs = {name: [] for name in steppers}
    trl_rec = []
    clock = {}

    def gapg_steps(k) -> str:
        """Step k of every GAPG variant, in an order that rotates with k; a line for the log."""
        names = list(steppers)
        names = names[k % len(names) :] + names[: k % len(names)]
        for name in names:
            recs[name].append(steppers[name].step(per_step[k]))
        return "  ".join(f"{name} {recs[name][-1]['total_s']:.2f}s" for name in steppers)

    class Interleave(TrainerCallback):
        """After TRL's optimizer step k: record it, then run GAPG's step k on the same prompts."""

        def on_step_end(self, a, state, control, **kw):
            now = time.perf_counter()
            ph = trl_timer.take()
            k = state.global_step - 1
            rec = {
                "total_s": now - clock["start"],
                "generation_s": ph.get("generation", 0.0),
                "scoring_s": ph.get("scoring", 0.0),
                "update_s": now - clock["start"] - ph.get("prepare", 0.0),
                "samples": trl_counts["samples"],
                "completion_tokens": trl_counts["completion_tokens"],
                "sequences_in_update": trl_counts["samples"],  # TRL forwards every completion, zero advantage or not
                "problem_uids": sorted(trl_counts["uids"]),
            }
            rec["other_s"] = rec["total_s"] - rec["generation_s"] - rec["scoring_s"] - rec["update_s"]
            trl_counts.update(samples=0, completion_tokens=0, uids=set())
            trl_rec.append(rec)
            line = gapg_steps(k)
            print(f"step {k + 1}/{n}{' (warm-up)' if k < args.warmup else ''}: TRL {rec['total_s']:.2f}s  {line}")
            clock["start"] = time.perf_counter()

    if args.no_trl:
        for k in range(n):
            print(f"step {k + 1}/{n}{' (warm-up)' if k < args.warmup else ''}: {gapg_steps(k)}", flush=True)
    else:
        trainer, trl_timer, trl_counts = build_trl(
            cfg, [p for s in per_step for p in s], args.fixed_length, callbacks=[Interleave()]
        )
        clock["start"] = time.perf_counter()
        trainer.train()
        if len(trl_rec) != n:
            raise RuntimeError(f"TRL ran {len(trl_rec)} optimizer steps, expected {n}")

    summaries = {name: summarise(r[args.warmup :]) for name, r in recs.items()}
    if not args.no_trl:
        summaries["TRL GRPOTrainer"] = summarise(trl_rec[args.warmup :])
    headers = [
        "trainer",
        "s/step",
        "samples/s",
        "completion tok/s",
        "generation s",
        "generation tok/s",
        "scoring s",
        "update s",
        "other s",
        "tokens/step",
        "seqs in update",
    ]

    def row(name, s):
        f = lambda k: f"{s[k]['mean']:.2f}"  # noqa: E731
        return [
            name,
            f"{s['total_s']['mean']:.2f} ± {s['total_s']['std']:.2f}",
            f"{s['samples_per_s']['mean']:.2f} ± {s['samples_per_s']['std']:.2f}",
            f"{s['tokens_per_s']['mean']:.1f}",
            f("generation_s"),
            f"{s['generation_tokens_per_s']['mean']:.1f} ± {s['generation_tokens_per_s']['std']:.1f}",
            f("scoring_s"),
            f("update_s"),
            f("other_s"),
            f"{s['completion_tokens']['mean']:.0f}",
            f"{s['sequences_in_update']['mean']:.1f}",
        ]

    P, G = cfg.rl.batch_prompts, cfg.rl.group_size
    title = (
        f"== training step: GAPG{'' if args.no_trl else ' vs TRL GRPOTrainer (dr_grpo, beta=0, scale_rewards=none)'}"
        f" ==\nmodel {cfg.model.name_or_path}, task {cfg.task.name}; {P} prompts x G={G}, max_new_tokens "
        f"{cfg.rl.max_new_tokens}{' (fixed length)' if args.fixed_length else ''}, micro-batch "
        f"{cfg.train.micro_batch_size}, filtering {'on' if cfg.rl.filtering else 'off'}, rollout weights "
        f"{cfg.rl.rollout_dtype}; {args.steps} measured steps after {args.warmup} warm-up; {device_name()}"
    )
    print("\n" + table(headers, [row(name, sm) for name, sm in summaries.items()], title))
    result = {
        "benchmark": "train_step",
        "command": command_line(),
        "device": device_name(),
        "torch_threads": threads,
        "model": cfg.model.name_or_path,
        "task": cfg.task.name,
        "prompts_per_step": P,
        "group_size": G,
        "max_new_tokens": cfg.rl.max_new_tokens,
        "fixed_length": args.fixed_length,
        "filtering": cfg.rl.filtering,
        "rollout_dtype": cfg.rl.rollout_dtype,
        "warmup": args.warmup,
        "steps": args.steps,
        "gapg": summaries["GAPG (ours)"],
        "gapg_steps": recs["GAPG (ours)"],
    }

    def compare(key, name, slow, fast):
        a, b = recs[fast][args.warmup :], (trl_rec if slow == "TRL GRPOTrainer" else recs[slow])[args.warmup :]
        ratio = summaries[slow]["total_s"]["mean"] / summaries[fast]["total_s"]["mean"]
        pm, ps = mean_std([y["total_s"] / x["total_s"] for x, y in zip(a, b)])
        gm, gs = mean_std([y["generation_s"] / x["generation_s"] for x, y in zip(a, b)])
        print(
            f"{name}: {ratio:.2f}x per step (mean s/step ratio; paired per step {pm:.2f} ± {ps:.2f}); "
            f"generation {gm:.2f} ± {gs:.2f}x"
        )
        result[key] = {
            "speedup": ratio,
            "paired": {"mean": pm, "std": ps},
            "generation_paired": {"mean": gm, "std": gs},
        }

    print()
    if not args.no_trl:
        result.update(trl=summaries["TRL GRPOTrainer"], trl_steps=trl_rec)
        compare("vs_trl", "speed-up of GAPG over TRL", "TRL GRPOTrainer", "GAPG (ours)")
        result["speedup"], result["paired_speedup"] = result["vs_trl"]["speedup"], result["vs_trl"]["paired"]
    if args.against:
        old_name = f"GAPG, rollout @{args.against}"
        result.update(against=args.against, gapg_old=summaries[old_name], gapg_old_steps=recs[old_name])
        compare("vs_old", f"speed-up of GAPG over GAPG with the rollout of {args.against}", old_name, "GAPG (ours)")
    write_json(args.json, result)
    del torch
    return result


if __name__ == "__main__":
    main()
