"""Reward API: TRL-signature functions by name and by file, fault handling, built-in verifiers."""

import time

import pytest

import rewards
from reasoning.config import load_config
from reasoning.schema import ConfigError
from rewards import RewardError, RewardRunner, RewardsConfig, RewardSpec
from reward_fns import length_penalty


BATCH = dict(prompts=["p1", "p2", "p3"], completions=["42", "41", "x"], answer=["42", "42", "42"])
HERE = "reward_fns"  # tests/reward_fns.py, importable by the reward pool too


def runner(*specs, **kwargs) -> RewardRunner:
    return RewardRunner(RewardsConfig(functions=list(specs), **kwargs))


def test_trl_reward_by_name_and_by_file_from_a_config(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(
        "def my_reward(prompts, completions, answer, **kwargs):\n"
        "    return [float(c == a) for c, a in zip(completions, answer)]\n"
    )
    cfg = load_config(None, [f"rewards=[{{name: test_length_penalty, weight: 0.5}}, {{fn: '{path}:my_reward'}}]"])
    assert [s.label for s in cfg.rewards.functions] == ["test_length_penalty", "my_reward"]
    with RewardRunner(cfg.rewards) as run:
        out = run(**BATCH)
    assert out.per_function["my_reward"] == [1.0, 0.0, 0.0]
    assert out.per_function["test_length_penalty"] == [1.0, -0.2, -0.1]
    assert out.total == pytest.approx([1.5, -0.1, -0.05])
    assert out.metrics["rewards/my_reward/mean"] == pytest.approx(1 / 3)
    assert out.metrics["reward"] == pytest.approx((1.5 - 0.1 - 0.05) / 3)
    assert {"reward_std", "rewards/test_length_penalty/std", "timing_s/reward"} <= set(out.metrics)
    assert rewards.get(f"{path}:my_reward")(["p"], ["1"], answer=["1"]) == [1.0]
    assert rewards.get(f"{HERE}:length_penalty") is length_penalty


def test_trl_builtin_reward_runs_unchanged():
    from trl.rewards import think_format_reward

    out = rewards.get("trl.rewards:think_format_reward")
    assert out is think_format_reward
    with runner(RewardSpec(fn="trl.rewards:think_format_reward", conversational=True)) as run:
        got = run(prompts=["a", "b"], completions=["<think>hmm</think> 4", "no tags"])
    assert got.per_function["think_format_reward"] == [1.0, 0.0]


def test_unknown_rewards_are_named():
    with pytest.raises(ConfigError, match="rewards.functions\\[0\\].*did you mean 'countdown'"):
        load_config(None, ["rewards=[{name: countdwn}]"])
    with pytest.raises(ConfigError, match="rewards.functions\\[0\\].*no_such_file.py"):
        load_config(None, ["rewards=[{fn: 'no_such_file.py:f'}]"])
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        load_config(None, [f"rewards=[{{fn: '{HERE}:nope'}}]"])


def test_missing_column_is_a_clear_error():
    with runner(RewardSpec(name="countdown")) as run, pytest.raises(ValueError, match="countdown.*numbers"):
        run(prompts=["p"], completions=["1+2"], target=[3])


@pytest.mark.parametrize("on_error", ["zero", "skip"])
def test_faulty_rewards_do_not_stop_the_batch(on_error, caplog):
    specs = [RewardSpec(fn=f"{HERE}:{name}") for name in ("raising", "sleeping", "wrong_length", "not_numbers")]
    specs.append(RewardSpec(name="test_length_penalty"))
    with runner(*specs, timeout_s=2.0, on_error=on_error) as run:
        run._get_pool()  # start-up (process start, imports) is not part of the timeout
        start = time.perf_counter()
        out = run(**BATCH)
        assert time.perf_counter() - start < 8  # the hang was cut at the 2 s timeout
        again = run(**BATCH)  # a fresh pool replaced the killed one
    failed = None if on_error == "skip" else 0.0
    for name in ("raising", "sleeping", "wrong_length", "not_numbers"):
        assert out.per_function[name] == [failed] * 3
        assert out.metrics[f"rewards/{name}/errors"] == 3
    assert out.per_function["test_length_penalty"] == [1.0, -0.2, -0.1] == again.per_function["test_length_penalty"]
    assert out.total == pytest.approx([1.0, -0.2, -0.1])
    text = "\n".join(out.errors)
    assert "'raising' raised RuntimeError: boom" in text
    assert "'sleeping' timed out after 2 s" in text
    assert "'wrong_length' returned 1 values for 3 completions" in text
    assert "'not_numbers' returned 'high' (str) for sample 1" in text
    assert "'sleeping' timed out" in caplog.text


def test_on_error_raise_names_the_function():
    with runner(RewardSpec(fn=f"{HERE}:wrong_length"), on_error="raise") as run:
        with pytest.raises(RewardError, match="'wrong_length' returned 1 values for 3 completions"):
            run(**BATCH)


def test_none_is_no_opinion_and_async_rewards_work():
    with runner(RewardSpec(fn=f"{HERE}:half_opinion"), RewardSpec(fn=f"{HERE}:async_reward")) as run:
        out = run(**BATCH)
    assert out.per_function["half_opinion"] == [2.0, None, 2.0]
    assert out.metrics["rewards/half_opinion/mean"] == 2.0
    assert out.per_function["async_reward"] == [2.0, 2.0, 1.0]
    assert out.total == [4.0, 2.0, 3.0]


HOSTILE = [
    "__import__('os').system('touch /tmp/pwned')",
    "().__class__.__bases__[0].__subclasses__()",
    "(lambda: 3)() + 4 + 5",
    "x + 4 + 5",
    "9**9**9",
    "2 ** 100000000",
    "3 / 0 + 4 + 5",
    "3 / (5 - 5) * 4",
    "3 + 3 + 4",  # wrong multiset
    "3 + 4",  # a number left out
    "1" * 5000,
    "(" * 500 + "3" + ")" * 500,
    "open('/etc/passwd').read()",
    "[3, 4, 5]",
    "3 if 4 else 5",
]


@pytest.mark.parametrize("answer", HOSTILE)
def test_hostile_countdown_answers_score_zero_fast(answer):
    start = time.perf_counter()
    score = rewards.get("countdown")(["p"], [f"<answer>{answer}</answer>"], numbers=[[3, 4, 5]], target=[12])
    assert score == [0.0]
    assert time.perf_counter() - start < 0.1


def test_builtin_verifiers():
    get = rewards.get
    assert get("countdown")(["p"], ["<answer>(5 - 3) * 4 + 0</answer>", "<answer>3+4+5</answer>"],
                            numbers=[[3, 4, 5, 0]] * 2, target=[8, 12]) == [1.0, 0.0]
    assert get("sudoku4")(["p"], ["<answer>1234341221434321</answer>"], puzzle=["1234341221434320"]) == [1.0]
    assert get("addition")(["p"], ["<answer>1,234</answer>"], answer=["1234"]) == [1.0]
    gsm = ["so <answer>1,234</answer>", "\\boxed{72}", "it is 5 then 72.", "no number", "<answer>71</answer>"]
    assert get("gsm8k")(["p"] * 5, gsm, answer=["#### 1234", "72", "Step... #### 72", "3", "72"]) == [
        1.0, 1.0, 1.0, 0.0, 0.0]
    assert get("math")(["p"] * 3, ["so \\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "\\boxed{2}"],
                       answer=["\\frac{1}{2}", "1/2", "3"]) == [1.0, 1.0, 0.0]
    fmt = ["<think>a</think><answer>4</answer>", "<answer>4</answer>", "<answer>4</answer> trailing junk",
           "<answer></answer>", "4", "<answer>4", "<answer><answer>4</answer>"]
    assert get("format")(["p"] * 7, fmt) == [1.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0]


def test_task_score_is_the_registered_reward():
    from reasoning.tasks import get_task

    task = get_task("countdown")
    example = {"prompt": "use 3 4 5 to make 12", "numbers": [3, 4, 5], "target": 12, "solution": "3+4+5"}
    for completion in ("<answer>3+4+5</answer>", "<answer>3*4</answer>"):
        assert task.score(completion, example) == rewards.get("countdown")(
            [example["prompt"]], [completion], numbers=[[3, 4, 5]], target=[12])[0]


def test_a_non_finite_score_is_handled_per_on_error_and_passes_the_preflight():
    """README: a reward that returns non-numbers is handled per on_error. inf is a number but no score:
    under on_error zero the batch scores 0 (reported by name) and the preflight lets it through; under
    raise it stops the run before anything is written."""
    from datasets import Dataset

    from reasoning.preflight import check_rewards
    from reasoning.schema import ConfigError
    from reasoning.tasks import get_task

    with runner(RewardSpec(fn=f"{HERE}:returns_inf"), on_error="zero") as run:
        out = run(**BATCH)
    assert out.per_function["returns_inf"] == [0.0] * 3
    assert "'returns_inf' returned a non-finite score inf for sample 0" in "\n".join(out.errors)
    train = Dataset.from_list([{"prompt": "sudoku 1234341221434321", "puzzle": "1234341221434321",
                                "solution": "1234341221434321"}])
    task = get_task("sudoku4")
    check_rewards(RewardsConfig(functions=[RewardSpec(fn=f"{HERE}:returns_inf")], on_error="zero"), task, train)
    with pytest.raises(ConfigError, match="non-finite score"):
        check_rewards(RewardsConfig(functions=[RewardSpec(fn=f"{HERE}:returns_inf")], on_error="raise"), task, train)
