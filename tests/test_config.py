import os
import subprocess
import sys

import pytest

from settings import ConfigError, load_config, rho


def test_defaults_yaml_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("rl:\n  budget: 0.2\n  group_size: 4\ntrain:\n  learning_rate: 3.0e-6\n")
    cfg = load_config(str(y), ["rl.group_size=6", "reward.alpha_cloud=0.3"])
    assert cfg.rl.budget == 0.2 and cfg.rl.group_size == 6 and cfg.train.learning_rate == 3e-6
    assert cfg.reward.alpha_cloud == 0.3 and cfg.model.lora is False
    assert rho(0.3) == pytest.approx(3 / 7)


@pytest.mark.parametrize(
    "override,needle",
    [
        (["rl.buget=0.3"], "rl.budget"),  # unknown key: names it and suggests the right one
        (["rl.budget=1.5"], "rl.budget"),
        (["rl.budget=0"], "strictly between 0 and 1"),
        (["rl.group_size=1"], "rl.group_size"),
        (["rl.group_size=abc"], "rl.group_size"),  # wrong type
        (["reward.alpha_cloud=1.0"], "collapses"),
        (["rl.budget"], "section.key=value"),
        (["task.name=chess"], "task.name"),
        (["rl.advantage=ppo"], "rl.advantage"),
        (["rl.advantage=grpo", "rl.trainer=trl_drgrpo"], "rl.advantage=grpo chooses the estimator"),
        (["rl.rollout_dtype=bfloat16", "rl.generator=vllm"], "rl.rollout_dtype=bfloat16"),
        (["rl.rollout_is_cap=-1"], "rl.rollout_is_cap"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    assert needle in str(e.value)


def test_unknown_key_in_yaml(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config(str(y))


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/nope.yaml")


def test_every_shipped_config_loads():
    import glob

    paths = glob.glob("configs/*.yaml")
    assert len(paths) >= 4
    for p in paths:
        load_config(p)


@pytest.mark.slow
def test_cli_help_lists_every_option_and_bad_key_exits_2():
    out = subprocess.run([sys.executable, "train.py", "--help"], capture_output=True, text=True, check=True).stdout
    for key in (
        "rl.budget",
        "rl.group_size",
        "reward.alpha_cloud",
        "reward.charge",
        "rl.gamma_lr",
        "train.save_every",
        "model.lora",
    ):
        assert key in out
    bad = subprocess.run([sys.executable, "train.py", "rl.group_size=1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "rl.group_size" in bad.stderr


def test_missing_data_file_is_a_clear_error(tmp_path):
    from envs.tasks import load_problems

    cfg = load_config(None, ["task.name=math", f"task.data_dir={tmp_path}", "task.hub_id=/nonexistent/dataset"])
    with pytest.raises(FileNotFoundError, match="task.data_dir"):
        load_problems(cfg.task)


def test_a_bare_no_reads_as_the_choice_no_not_a_boolean(tmp_path):
    """YAML (and OmegaConf's dotlist) read ``no`` as False; a choice that is literally "no" gets it back."""
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    (tmp_path / "c.yaml").write_text("train:\n  mixed_precision: no\n")
    assert load_config(str(tmp_path / "c.yaml")).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_config(None, ["train.mixed_precision=yes"])  # True is not a choice there


def test_print_config_writes_the_resolved_yaml_that_loads_back(tmp_path, capsys):
    import train
    from settings import to_dict

    assert train.main(["--config", "configs/cpu_default.yaml", "rl.budget=0.2", "--print-config"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "resolved.yaml").write_text(text)
    again = load_config(str(tmp_path / "resolved.yaml"))
    own = load_config("configs/cpu_default.yaml").task.num_test
    assert again.rl.budget == 0.2 and again.task.num_test == own  # the override and the config's own value
    assert to_dict(again) == to_dict(load_config("configs/cpu_default.yaml", ["rl.budget=0.2"]))
    assert not (tmp_path / "outputs").exists()  # nothing ran


def test_print_config_shows_the_lsrp_section_only_for_an_lsrp_run(capsys):
    import train

    assert train.main(["--config", "configs/cpu_default.yaml", "--print-config"]) == 0
    assert "\nlsrp:" not in capsys.readouterr().out
    assert train.main(["--config", "configs/lsrp_cpu.yaml", "--print-config"]) == 0
    assert "\nlsrp:" in capsys.readouterr().out


def test_help_shows_the_effective_values_of_the_given_config(capsys):
    import train

    assert train.main(["--config", "configs/cpu_default.yaml", "rl.budget=0.2", "--help"]) == 0
    out = capsys.readouterr().out
    assert "rl.budget (float, default 0.3, now 0.2)" in out
    yaml_value = load_config("configs/cpu_default.yaml").rl.batch_prompts
    assert yaml_value != 8 and f"rl.batch_prompts (int, default 8, now {yaml_value})" in out  # from the YAML file
    assert "rl.temperature (float, default 1.0)" in out  # unchanged: no 'now'
    assert train.main(["--help", "rl.budget=7"]) == 2  # a bad value: the help, then the error
    assert "rl.budget=7" in capsys.readouterr().err


@pytest.mark.slow
def test_the_readme_launch_is_quiet_and_a_bad_option_is_one_line():
    """The README's `accelerate launch -q --config_file configs/accelerate/single.yaml train.py ...`: no warning
    block about unset launch defaults, and a bad config value reads as our one error line, exit status non-zero."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--config_file", "configs/accelerate/single.yaml"]
    done = subprocess.run(
        cmd + ["train.py", "--config", "configs/cpu_default.yaml", "rl.budget=2"],
        capture_output=True,
        text=True,
        env=dict(os.environ, WANDB_MODE="offline"),  # as CI runs it: transformers prints a line on import then
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode != 0
    assert lines == [
        "error: rl.budget=2.0 must lie strictly between 0 and 1 (it is the maximum cloud share, e.g. rl.budget=0.3 "
        "for 30%)."
    ]


def test_eval_and_serve_name_stray_words_and_the_override_shape(capsys):
    """Words that are neither an option nor key=value stop eval.py and serve.py with one line naming them."""
    import eval as eval_cmd
    import serve
    from core.config import stray_arguments_error

    assert stray_arguments_error(["rl.budget=0.2", "cloud.accuracy=0.9"]) is None
    assert eval_cmd.main(["--config", "configs/tiny_test.yaml", "rl.budget=0.2", "--modle", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "['--modle', 'x']" in err and "rl.budget=0.3" in err
    assert serve.main(["--model", "x", "budget"]) == 2
    err = capsys.readouterr().err
    assert "['budget']" in err and "cloud.accuracy=0.9" in err
