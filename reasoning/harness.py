"""`dlmrl` as an lm-evaluation-harness model: any dlmrl model behind lm-eval's tasks.

    dlmrl lm-eval --model dlmrl --model_args pretrained=PATH,gen_length=256,block_length=32,steps=128 \\
        --tasks gsm8k --batch_size 8

`dlmrl lm-eval` is lm-eval's own command line (every argument as lm-eval documents it) with this
model registered: lm-eval 0.4 finds models only in its own registry, so a package cannot add
one to the plain `lm_eval` command (LLaDA's `eval_llada.py` and Fast-dLLM do the same). From
Python: `import reasoning.harness`, then `lm_eval.simple_evaluate(model="dlmrl", ...)`.

PATH is what `dlmrl eval` takes: a base snapshot (LLaDA, Dream, ... loaded natively), a run
checkpoint (its LoRA adapter applied; its run's config) or a `dlmrl export`. Model args:

- every decoding setting of docs/decoding.md by its name (gen_length, block_length, steps,
  temperature, commit, confidence, threshold, remask, latent_steps, cache, ...); `remasking` is
  LLaDA's name for `commit`. Not given: the config's eval decoding.
- `mc_num` (default 128, LLaDA's): Monte-Carlo samples per log-likelihood (reasoning/likelihood.py),
  `mc_batch_size` (default 32) of them per forward pass; lm-eval's `--batch_size`: answers decoded
  together.
- `check_greedy` (default true): whether `loglikelihood` also decodes the continuation greedily
  to answer lm-eval's is-greedy question (one forward per token); false answers False, faster.
- `seed` (default 1234, LLaDA's), `threads`, `device`, and `key.sub=value` config overrides.

generate_until: the dlmrl sampler with those settings, batched; lm-eval's `until` strings cut
the answer (after its stop token), `temperature` / `do_sample` in a task's generation kwargs
override the decoding temperature; `max_gen_toks` is not used — the canvas is `gen_length`.
loglikelihood_rolling: the same estimate over lm-eval's rolling windows of the text.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from reasoning.data import decode_completion
from reasoning.likelihood import is_greedy, mc_log_likelihood
from reasoning.schema import ConfigError, suggest
from reasoning.targets import load_target, to_accelerator
from rollouts import DecodingConfig, make_policy, sample, sample_seed
from rollouts.families import set_attention_block

ALIASES = {"remasking": "commit"}  # LLaDA's / d1's name -> ours
OWN_ARGS = ("mc_num", "mc_batch_size", "batch_size", "max_batch_size", "check_greedy", "seed", "threads", "device")


@register_model("dlmrl")
class DlmrlLM(TemplateLM):
    """lm-eval's three request types on a dlmrl model (module docstring: the model args)."""

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """lm-eval's model_args, with its own --device / --batch_size filling only what they leave unset
        (lm-eval's default passes both, so `device=` in model_args said 'got multiple values')."""
        from lm_eval import utils

        args = utils.simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        return cls(**args, **extra)

    def __init__(self, pretrained: str | None = None, mc_num: int = 128, mc_batch_size: int = 32,
                 batch_size: int | str | None = 8, max_batch_size: int | None = None, check_greedy: bool = True,
                 seed: int = 1234, threads: int | None = None, device: str | None = None, **options):
        super().__init__()
        if not pretrained:
            raise ConfigError("model_args 'pretrained': expected the path of a dlmrl run or checkpoint "
                              "(--model_args pretrained=PATH,...)")
        mc_num, mc_batch_size, seed = (_whole("mc_num", mc_num, 1), _whole("mc_batch_size", mc_batch_size, 1),
                                       _whole("seed", seed, 0))
        threads = None if threads is None else _whole("threads", threads, 1)
        check_greedy = _flag("check_greedy", check_greedy)
        if device is not None and not str(device).split(":")[0] in ("cpu", "cuda"):
            raise ConfigError(f"model_args 'device': expected cpu, cuda or cuda:N, got {str(device)[:80]!r}")
        overrides = [f"{key}={value}" for key, value in options.items() if "." in key]
        decoding = {ALIASES.get(key, key): value for key, value in options.items() if "." not in key}
        known = [f.name for f in dataclasses.fields(DecodingConfig)]
        for key in decoding:
            if key not in known:
                raise ConfigError(f"model_args '{key}': not a dlmrl model argument{suggest(key, known + list(OWN_ARGS))}"
                                  f" (decoding settings: {', '.join(known)}; also {', '.join(OWN_ARGS)})")
        if "gen_length" in decoding:  # a new canvas: blocks and steps follow it unless given too
            decoding = {"block_length": None, "steps": None, **decoding}
        cfg, model, tokenizer, _ = load_target(pretrained, overrides)
        torch.set_num_threads(int(threads or cfg.threads))
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            logging.getLogger(__name__).warning("device %s: no CUDA device here; the model stays on the CPU", device)
        model = model.to(device) if device and torch.cuda.is_available() else to_accelerator(model)
        try:
            self.decoding = dataclasses.replace(cfg.eval_decoding(), **decoding)
        except (TypeError, ValueError) as exc:
            given = [k for k in decoding if k in options or k in ALIASES.values()]
            raise ConfigError(f"model_args {', '.join(repr(k) for k in given)}: {exc}") from None
        if "block_length" in decoding:  # a block-diffusion model decodes with that attention block
            set_attention_block(model, self.decoding.block_length)
        self.policy = make_policy(model.eval(), tokenizer, cfg.model.shift_logits)
        self.tokenizer = tokenizer
        self.pretrained = pretrained
        self.mc_num, self.mc_batch_size = int(mc_num), int(mc_batch_size)
        self.check_greedy, self.seed = bool(check_greedy), int(seed)
        self._batch_size = int(batch_size) if str(batch_size).isdigit() and int(batch_size) > 0 else 8

    # --- what lm-eval asks of every model
    @property
    def eot_token_id(self) -> int:
        return self.policy.ids.eos

    @property
    def prefix_token_id(self) -> int:
        """An empty context is scored after BOS (else EOS), as lm-eval's causal models do."""
        return self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self.policy.context_length or 4096

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "dlmrl").replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Text -> ids; the tokenizer's own special tokens (BOS) unless the text already starts with
        them (a chat template applied) — how `dlmrl sample` encodes a prompt too."""
        if add_special_tokens is None:
            bos = self.tokenizer.bos_token
            add_special_tokens = not (bos and string.startswith(bos))
        return self.tokenizer(string, add_special_tokens=add_special_tokens)["input_ids"]

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    # --- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = [""] * len(requests)
        groups: dict[float, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(self._temperature(request.args[1]), []).append(index)
        bar = tqdm(total=len(requests), desc="dlmrl generate_until", disable=disable_tqdm)
        for temperature, indices in groups.items():
            decoding = dataclasses.replace(self.decoding, temperature=temperature)
            for lo in range(0, len(indices), self._batch_size):
                chunk = indices[lo:lo + self._batch_size]
                prompts = [self._fit(self.tok_encode(requests[i].args[0]), decoding.gen_length) for i in chunk]
                seeds = [sample_seed(self.seed, i, 0) for i in chunk]
                for i, trajectory in zip(chunk, sample(self.policy, prompts, decoding, seeds)):
                    text = decode_completion(self.tokenizer, trajectory.final_tokens, self.policy.ids.stop)
                    out[i] = cut_at(text, requests[i].args[1].get("until"))
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
                bar.update(len(chunk))
        bar.close()
        return out

    def _temperature(self, gen_kwargs: dict) -> float:
        if gen_kwargs.get("do_sample") is False:
            return 0.0
        return float(gen_kwargs.get("temperature", self.decoding.temperature))

    def _fit(self, prompt: list[int], room: int) -> list[int]:
        """The prompt's last tokens that leave `room` positions in the model's context."""
        return prompt[-max(self.max_length - room, 1):] if len(prompt) + room > self.max_length else prompt

    # --- likelihoods
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        out = []
        for index, (key, context, continuation) in enumerate(tqdm(requests, desc="dlmrl loglikelihood",
                                                                    disable=disable_tqdm)):
            context = self._fit(list(context), len(continuation))
            generator = torch.Generator().manual_seed(sample_seed(self.seed, index, 0))
            logp = mc_log_likelihood(self.policy, context, list(continuation), self.mc_num, self.mc_batch_size,
                                     generator)
            greedy = self.check_greedy and is_greedy(self.policy, context, list(continuation))
            out.append((logp, greedy))
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, out[-1])
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The same estimate summed over lm-eval's rolling windows: every token scored once, with as
        much preceding text as the model's context holds (a lower bound, like each window's)."""
        out = []
        for (text,) in tqdm([r.args for r in requests], desc="dlmrl loglikelihood_rolling", disable=disable_tqdm):
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                self.tok_encode(text, add_special_tokens=False), self.prefix_token_id, self.max_length, 1)]
            scores = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows], disable_tqdm=True)
            out.append(sum(score for score, _ in scores))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), out[-1])
        return out

    def get_model_info(self) -> dict:
        return {"model": "dlmrl", "pretrained": os.path.abspath(self.pretrained),
                "decoding": dataclasses.asdict(self.decoding), "mc_num": self.mc_num, "seed": self.seed}


def cut_at(text: str, until: list[str] | str | None) -> str:
    """The text before the first of lm-eval's stop strings."""
    for stop in [until] if isinstance(until, str) else (until or []):
        if stop:
            text = text.split(stop)[0]
    return text


def _whole(name: str, value, minimum: int) -> int:
    """A model_args integer (lm-eval passes what it could not parse as a number as a string)."""
    if isinstance(value, bool) or not (isinstance(value, int) or str(value).strip().lstrip("-").isdigit()):
        raise ConfigError(f"model_args '{name}': expected a whole number >= {minimum}, got {str(value)[:80]!r}")
    if int(value) < minimum:
        raise ConfigError(f"model_args '{name}': expected a whole number >= {minimum}, got {int(value)}")
    return int(value)


def _flag(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ConfigError(f"model_args '{name}': expected true or false, got {str(value)[:80]!r}")
