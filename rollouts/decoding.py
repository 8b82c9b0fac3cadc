"""One definition of a decoding step, shared by the sampler and replay.

`DecodingConfig` holds the decoding policy's knobs (docs/decoding.md). `step_distribution`
turns a batch of canvases into what one denoising step decides from: the token distribution at
every answer position (log softmax(logits / T) over every token but [MASK], truncated by top_k /
top_p), and from it each position's confidence and selection score. The sampler draws from it;
replay scores recorded events with it — the same function, so the behaviour log-probs and the
replayed ones are computed the same way by construction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from rollouts.families import family_of
from rollouts.policy import DiffusionPolicy
from rollouts.selection import CONFIDENCES, confidence, truncate

CommitRule = Literal["low_confidence", "random", "threshold"]
ConfidenceMeasure = Literal["auto", "chosen_prob", "max_prob", "margin", "entropy"]
RemaskRule = Literal["none", "running_confidence"]
CacheMode = Literal["none", "prefix", "dual", "block"]


@dataclass
class DecodingConfig:
    """The decoding policy knobs (docs/decoding.md); errors name the setting."""

    gen_length: int = 32
    block_length: int | None = None  # semi-AR block size; None = gen_length (fully parallel)
    steps: int | None = None  # denoising steps over the whole answer, split over blocks; None = gen_length
    temperature: float = 0.0  # token choice; 0 = argmax
    top_k: int | None = None  # sample among the k most likely tokens only (null = all)
    top_p: float = 1.0  # ... and among the smallest set holding this much probability (1 = all)
    commit: CommitRule = "low_confidence"
    # how sure the model is at a position (rollouts.selection.confidence); auto = the model family's
    # reference sampler: LLaDA chosen_prob (untempered prob of the sampled token), Dream entropy, others max_prob
    confidence: ConfidenceMeasure = "auto"
    threshold: float = 0.9  # commit: threshold commits every position above this confidence
    selection_temperature: float = 0.0  # > 0: stochastic (Plackett–Luce) choice of positions
    remask: RemaskRule = "none"
    remask_threshold: float = 0.5  # running_confidence re-masks tokens whose probability fell below this
    remask_budget: int = 8  # at most this many re-masks per answer (bounds the revision loop)
    latent_steps: int = 0  # K latent-thinking passes per denoising step
    latent_mix: float = 0.5  # weight of the belief embedding vs the [MASK] embedding
    # KV cache (rollouts/kv_cache.py): none | prefix, dual (approximate, Fast-dLLM) | block (exact, for
    # block-diffusion models: finished attention blocks cached)
    cache: CacheMode = "none"
    # record each step's one-forward completion ŷ_t in the trajectory (step_prediction): what
    # intermediate rewards and the temporal_consistency reward read; costs (steps x gen_length) ints
    record_predictions: bool = False
    # keep decoding after an answer's first stop token, to the end of the canvas (JustGRPO trains every
    # position, the pads after [EOS] included); the answer's text still ends at that stop token
    decode_past_stop: bool = False

    def __post_init__(self) -> None:
        if self.confidence == "prob":  # the name before chosen_prob existed
            self.confidence = "max_prob"
        for name, rule in (("commit", CommitRule), ("confidence", ConfidenceMeasure), ("remask", RemaskRule),
                           ("cache", CacheMode)):
            if getattr(self, name) not in get_args(rule):
                raise ValueError(f"decoding setting '{name}': expected one of {', '.join(get_args(rule))}, "
                                 f"got {getattr(self, name)!r}")
        if self.gen_length < 1:
            raise ValueError(f"decoding setting 'gen_length' must be >= 1, got {self.gen_length}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"decoding setting 'steps' must be >= 1 (or null for gen_length), got {self.steps}")
        if self.block < 1 or self.gen_length % self.block:
            raise ValueError(f"decoding setting 'block_length' ({self.block}) must divide "
                             f"'gen_length' ({self.gen_length})")
        if not self.num_blocks <= self.total_steps <= self.gen_length:
            raise ValueError(f"decoding setting 'steps' ({self.total_steps}) must be at least the number of blocks "
                             f"(gen_length / block_length = {self.num_blocks}) and at most gen_length "
                             f"({self.gen_length})")
        if self.cache == "dual" and self.num_blocks == 1:
            raise ValueError("decoding setting 'cache': dual caches the blocks after the current one, so it needs "
                             "semi-autoregressive blocks (set block_length below gen_length)")
        if self.cache != "none" and self.latent_steps > 0:
            raise ValueError("decoding setting 'cache': latent thinking re-predicts the whole canvas each pass; "
                             "use cache none with latent_steps > 0")
        checks = {"temperature": self.temperature >= 0, "selection_temperature": self.selection_temperature >= 0,
                  "top_k": self.top_k is None or self.top_k >= 1, "top_p": 0 < self.top_p <= 1,
                  "threshold": 0 <= self.threshold <= 1, "remask_threshold": 0 <= self.remask_threshold <= 1,
                  "remask_budget": self.remask_budget >= 0, "latent_steps": self.latent_steps >= 0,
                  "latent_mix": 0 <= self.latent_mix <= 1}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"decoding setting '{name}' is out of range: {getattr(self, name)}")

    @property
    def block(self) -> int:
        return self.block_length or self.gen_length

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block

    @property
    def total_steps(self) -> int:
        return self.steps or self.gen_length

    def block_steps(self) -> list[int]:
        """Step budget of each block: `steps` split as evenly as possible (earlier blocks first)."""
        return commit_schedule(self.total_steps, self.num_blocks)

    @property
    def stochastic_selection(self) -> bool:
        return self.commit == "random" or self.selection_temperature > 0

    def selection_scores(self, conf: torch.Tensor) -> torch.Tensor:
        """Plackett–Luce scores of candidate positions (also the deterministic top-k key)."""
        if self.commit == "random":
            return torch.zeros_like(conf)
        return conf / self.selection_temperature if self.selection_temperature > 0 else conf


def commit_schedule(total: int, parts: int) -> list[int]:
    """Split `total` (tokens, or steps) over `parts` (steps, or blocks) as evenly as possible,
    remainder first (LLaDA)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (ids, attention_mask)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt):] = 1
    return ids, mask




def block_decoding(policy: DiffusionPolicy, cfg: DecodingConfig) -> DecodingConfig:
    """The decoding config for this policy. A block-diffusion model decodes one attention block at a
    time: `block_length` null means the model's own, any other length must equal it, and the
    Fast-dLLM caches (which approximate a bidirectional model) give way to the exact `cache: block`."""
    attention = policy.attention_block
    if attention is None:
        if cfg.cache == "block":
            raise ValueError("decoding setting 'cache': block is the exact cache of block-diffusion models (sdar, "
                             "llada2); this model attends over the whole canvas (use none, prefix or dual)")
        return cfg
    if cfg.cache in ("prefix", "dual"):
        raise ValueError(f"decoding setting 'cache': {cfg.cache} approximates a bidirectional model's cache; a "
                         f"block-diffusion model caches its finished blocks exactly with cache: block")
    if cfg.block_length is None:
        return dataclasses.replace(cfg, block_length=attention)
    if cfg.block != attention:
        raise ValueError(f"decoding setting 'block_length' ({cfg.block}) must equal the model's attention block "
                         f"length ({attention}, fixed when the model loads): a block-diffusion model decodes one attention "
                         f"block at a time")
    return cfg


def resolve_confidence(policy: DiffusionPolicy, cfg: DecodingConfig) -> str:
    """The confidence measure in force: `auto` -> the model family's reference rule."""
    measure = cfg.confidence
    if measure == "auto":
        measure = getattr(family_of(policy.model), "CONFIDENCE", "max_prob")  # the family's reference rule
    if measure == "chosen_prob" and cfg.selection_temperature > 0:
        raise ValueError("decoding setting 'confidence': chosen_prob depends on the sampled tokens, so a "
                         "Plackett-Luce selection over it has no replayable probability; use max_prob, margin "
                         "or entropy with selection_temperature > 0")
    assert measure in CONFIDENCES, measure
    return measure


@dataclass
class StepDistribution:
    """What one denoising step decides from, for a batch of canvases."""

    logp: torch.Tensor  # (B, L, V): log softmax(logits / T) over every token but [MASK], truncated
    cfg: DecodingConfig
    measure: str  # the confidence measure in force (resolve_confidence)

    def at(self, positions: torch.Tensor) -> "StepDistribution":
        """The distribution at `positions` (B, W) of each row (e.g. the current block)."""
        logp = self.logp.gather(1, positions[..., None].expand(-1, -1, self.logp.shape[-1]))
        return StepDistribution(logp, self.cfg, self.measure)

    def confidence(self, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) confidence per position; `tokens` (the sampled ones) only for chosen_prob."""
        return confidence(self.logp, self.measure, tokens, self.cfg.temperature)

    def selection_scores(self, conf: torch.Tensor) -> torch.Tensor:
        """(B, L) Plackett–Luce scores of candidate positions (also the deterministic top-k key)."""
        return self.cfg.selection_scores(conf)


def step_distribution(policy: DiffusionPolicy, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                      answer: torch.Tensor, cfg: DecodingConfig, measure: str) -> StepDistribution:
    """One step's distribution over full canvases: prompt + answer through the model (with the
    latent-thinking passes), tempered, [MASK] excluded, truncated."""
    logp = policy.step_log_probs(prompt_ids, prompt_mask, answer, cfg.temperature, cfg.latent_steps, cfg.latent_mix)
    return StepDistribution(truncate(logp, cfg.top_k, cfg.top_p), cfg, measure)


def distribution_from_logits(policy: DiffusionPolicy, logits: torch.Tensor, cfg: DecodingConfig,
                             measure: str) -> StepDistribution:
    """The same distribution from answer logits computed elsewhere (the sampler's block KV cache)."""
    return StepDistribution(truncate(policy.answer_log_probs(logits, cfg.temperature), cfg.top_k, cfg.top_p),
                            cfg, measure)
