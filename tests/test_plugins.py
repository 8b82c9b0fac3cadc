"""A new task, objective and model family are each one piece of code written outside the package:
registered from this test file, with no other file changed, they train and sample."""

import sys
import types
from dataclasses import dataclass

import pytest
import torch
from transformers import AutoModelForCausalLM

import rewards
from reasoning.objectives import OBJECTIVES, Objective, ObjectiveSettings, register
from reasoning.objectives.base import full_mask_log_probs
from reasoning.tasks import TASKS, Task, register_task
from reasoning.tasks.base import ANSWER_FORMAT, draw_distinct
from reasoning.rl import run_rl
from rollouts import DecodingConfig, load_pretrained, make_policy, sample
from rollouts.families import FAMILIES
from rollouts.families import register as register_family
from rollouts.sampler import resolve_confidence
from helpers import config, train_steps


@dataclass
class OneStepSettings(ObjectiveSettings):
    toy_temperature: float = 1.0  # the answer tokens are scored from logits / toy_temperature


class OneStepAnswer(Objective):
    """A toy objective: PPO-clip on the answer tokens scored from the fully masked canvas (d1's
    one-step estimate without prompt masking), with a setting of its own."""

    name = "toy_one_step"
    Settings = OneStepSettings
    paper_defaults = dict(clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.0, inner_steps=1, normalize_std=True,
                          leave_one_out=False)

    def unit_log_probs(self, policy, batch, prep, indices, inner):
        trajectories = [batch.trajectories[i] for i in indices]
        logp = (full_mask_log_probs(policy, trajectories) / self.s.toy_temperature).log_softmax(-1)
        logps, entropies = [], []
        for row, i in enumerate(indices):
            mask = self.answer_mask(batch, prep.hints, i).to(logp.device)
            final = torch.as_tensor(trajectories[row].final_tokens, device=logp.device)
            logps.append(logp[row].gather(-1, final[:, None])[:, 0][mask])
            entropies.append(-(logp[row].detach().exp() * logp[row].detach()).sum(-1)[mask])
        return logps, entropies


@pytest.fixture
def toy_objective():
    register(OneStepAnswer)
    yield OneStepAnswer
    OBJECTIVES.pop(OneStepAnswer.name)


def test_an_objective_registered_in_a_test_file_trains_two_rl_steps(tmp_path, toy_objective):
    cfg = config(tmp_path, "trainer.objective=toy_one_step", "trainer.checkpoint_every=2")
    assert cfg.trainer.inner_steps == 1 and cfg.trainer.normalize_std  # its paper_defaults filled the nulls
    result = run_rl(cfg)
    steps = train_steps(cfg.run_dir)
    assert [m["step"] for m in steps] == [1, 2] and result["policy_version"] == 2
    for m in steps:
        assert m["train/samples"] > 0 and m["skipped_steps"] == 0 and m["grad_norm"] > 0
        assert m["ratio/first_inner_max_dev"] < 1e-4  # θ_old is θ at the update's start


def test_an_unregistered_objective_is_a_config_error(tmp_path):
    from reasoning.schema import ConfigError

    with pytest.raises(ConfigError, match="trainer.objective.*toy_one_step"):
        config(tmp_path, "trainer.objective=toy_one_step")


def make_toy_family() -> types.ModuleType:
    """A family module written here: any decoder whose config.json says `toy_dlm: true`, run
    bidirectionally, with the margin as its reference confidence."""
    family = types.ModuleType("toy_family")
    family.NAME = "toy"
    family.CONFIDENCE = "margin"

    def matches(config: dict) -> bool:
        return config.get("toy_dlm") is True

    def load(path, config, dtype, trust_remote_code=False):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model.config.is_causal = False
        return model

    family.matches, family.load = matches, load
    return family


@pytest.fixture
def toy_family():
    before = dict(FAMILIES)
    module = register_family(make_toy_family())
    sys.modules[module.__name__] = module
    yield module
    FAMILIES.clear()
    FAMILIES.update(before)
    sys.modules.pop(module.__name__, None)


def test_a_family_registered_in_a_test_file_is_detected_and_samples(tmp_path, tiny_model, tiny_tokenizer,
                                                                     toy_family):
    tiny_model.config.toy_dlm = True
    tiny_model.save_pretrained(tmp_path / "ckpt")
    model = load_pretrained(str(tmp_path / "ckpt"))  # family auto: the toy's `matches` is asked first
    assert model.config.dlm_family == "toy" and model.config.is_causal is False
    policy = make_policy(model.eval(), tiny_tokenizer)
    decoding = DecodingConfig(gen_length=8, steps=4, temperature=1.0)
    assert resolve_confidence(policy, decoding) == "margin"  # the family's own rule for `confidence: auto`
    prompts = [tiny_tokenizer.encode("12+3="), tiny_tokenizer.encode("4+5=")]
    trajectories = sample(policy, prompts, decoding, seeds=[0, 1])
    assert [len(t.final_tokens) for t in trajectories] == [8, 8]
    assert all((t.event_logp[t.commits] <= 0).all() and t.commits.sum() > 0 for t in trajectories)


JUST_GRPO_DECODING = ("rollout.block_length=1", "rollout.steps=null", "rollout.decode_past_stop=true")


@pytest.mark.parametrize("objective,decoding", [
    ("{name: spg, spg_beta: 1.0}", ()), ("{name: gdpo, gdpo_nodes: 2}", ()),
    ("{name: espo, espo_draws: 1, kl_coef: 0.0}", ()), ("{name: bgpo, bgpo_draws: 4}", ()),
    ("{name: just_grpo, replay_batch: 64}", JUST_GRPO_DECODING)])
def test_an_objective_with_its_own_settings_trains_two_steps(tmp_path, objective, decoding):
    cfg = config(tmp_path, f"trainer.objective={objective}", "trainer.checkpoint_every=2", "trainer.inner_steps=1",
                 *decoding)
    settings = cfg.objective_settings()
    given = {k: v for k, v in (part.split(": ") for part in objective.strip("{}").split(", ")) if k != "name"}
    assert all(str(getattr(settings, k)) == v for k, v in given.items())  # what the config set, typed
    run_rl(cfg)
    steps = train_steps(cfg.run_dir)
    assert [m["step"] for m in steps] == [1, 2]
    assert all(m["train/samples"] > 0 and m["skipped_steps"] == 0 for m in steps)


def test_an_objective_of_the_users_own_module_is_named_module_colon_class(tmp_path):
    cfg = config(tmp_path, "trainer.objective=test_plugins:OneStepAnswer", "trainer.checkpoint_every=2")
    try:
        assert cfg.trainer.objective_name == "test_plugins:OneStepAnswer" and cfg.trainer.inner_steps == 1
        run_rl(cfg)
        assert [m["step"] for m in train_steps(cfg.run_dir)] == [1, 2]
    finally:
        OBJECTIVES.pop("test_plugins:OneStepAnswer", None)


@rewards.register("toy_parity", in_process=True)
def toy_parity(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the completion's <answer> is the parity of the prompt's bits."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [float(ANSWER_FORMAT.format(a) in t) for t, a in zip(texts, answer)]


class Parity(Task):
    """A toy task written here: `parity 0110` -> <answer>0</answer>."""

    name = "toy_parity"
    reward = "toy_parity"
    columns = ("prompt", "answer")

    def generate(self, rng, n, split, exclude, bits: int = 6):
        def make(rng):
            word = "".join(rng.choice("01") for _ in range(bits))
            return {"prompt": f"parity {word}", "answer": str(word.count("1") % 2)}

        return draw_distinct(make, rng, n, self.key, exclude, self.name)

    def reference(self, example):
        return ANSWER_FORMAT.format(example["answer"])


@pytest.fixture
def toy_task():
    register_task(Parity)
    yield Parity
    TASKS.pop(Parity.name)


def test_a_task_an_objective_with_its_own_setting_and_a_family_from_this_file_train_two_steps(
        tmp_path, tiny_model, tiny_tokenizer, toy_task, toy_objective, toy_family):
    """All three at once: the task by its registered name, the objective with its own setting, the
    model detected as the toy family; then the task again as `module:Class`, never registered."""
    tiny_model.config.toy_dlm = True
    tiny_model.save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer.save_pretrained(tmp_path / "ckpt")
    # the task's own reward, plus a dense one: a random model never writes an <answer>, and an update
    # needs groups whose rewards differ
    common = (f"model.path={tmp_path / 'ckpt'}", "rewards=[{name: toy_parity}, {fn: 'reward_fns:digit_fraction'}]",
              "data.train_size=32", "rollout.gen_length=16", "trainer.checkpoint_every=2")
    cfg = config(tmp_path, "data.task=toy_parity", "trainer.objective={name: toy_one_step, toy_temperature: 2.0}",
                 *common)
    assert cfg.objective_settings().toy_temperature == 2.0
    result = run_rl(cfg)
    steps = train_steps(cfg.run_dir)
    assert [m["step"] for m in steps] == [1, 2] and result["policy_version"] == 2
    assert all("rewards/toy_parity/mean" in m and m["train/samples"] > 0 for m in steps)
    assert "eval/toy_parity/acc" in result
    from rollouts.families import family_of

    assert family_of(load_pretrained(str(tmp_path / "ckpt"))).NAME == "toy"

    again = config(tmp_path, "data.task=test_plugins:Parity", "name=by_reference", *common)
    try:
        run_rl(again)
        assert [m["step"] for m in train_steps(again.run_dir)] == [1, 2]
    finally:
        TASKS.pop("test_plugins:Parity", None)


def test_a_task_reference_that_is_not_a_task_is_named():
    from reasoning.schema import ConfigError
    from reasoning.tasks import get_task

    with pytest.raises(ConfigError, match="data.task.*'test_plugins:toy_parity' is not a Task subclass"):
        get_task("test_plugins:toy_parity")
