"""`dlmrl sft CONFIG`: masked-diffusion supervised fine-tuning (the LLaDA objective).

Algorithm, per batch of (prompt, reference answer) pairs:
  1. draw t ~ U(mask_eps, 1] per sample and mask each answer token with probability t
     (the prompt is never masked; the answer canvas is the reference + [EOS] padding);
  2. optionally (`sft.corrupt_prob`) replace a fraction of the still-visible answer tokens
     by random tokens and add cross-entropy on visible positions, so the model's
     confidence in visible tokens means something (needed by re-masking/revision);
  3. loss = sum over masked positions of CE / t, divided by the answer length,
     averaged over the batch (an upper bound on the negative log-likelihood);
  4. one DeepSpeed step (ZeRO preset, gradient accumulation over micro-batches, clipping).
Every `eval_every` steps: held-out accuracy with the run's decoding policy and the
task's own scorer. Checkpoints are save_pretrained directories, written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from reasoning.checkpoint import complete_checkpoints, save_checkpoint
from reasoning.config import Config, deepspeed_config_path, write_resolved
from reasoning.data import SFTBatch, collate_sft, tokenize_sft
from reasoning.engine import build_engine, engine_step, zero_stage
from reasoning.evaluate import evaluate_and_log
from reasoning.metrics import MetricsLogger
from reasoning.modeling import check_lora_targets, count_parameters, load_model
from reasoning.output import PhaseProgress
from reasoning.preflight import check_prompt_lengths, require_training_rows
from reasoning.recipe import base_weights, begin, make_trainable
from reasoning.rundir import claim_run_dir
from reasoning.schema import ConfigError
from reasoning.tasks import get_task
from rollouts import DiffusionPolicy, make_policy
from rollouts.block_packing import pack, pack_batch


def llada_loss(policy: DiffusionPolicy, batch: SFTBatch, mask_eps: float, corrupt_prob: float,
               vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """The masked-diffusion SFT loss for one (micro-)batch."""
    answers = batch.answer_ids
    size, length = answers.shape
    t = mask_eps + (1 - mask_eps) * torch.rand(size, 1, generator=generator)
    masked = torch.rand(size, length, generator=generator) < t
    noisy = answers.masked_fill(masked, policy.ids.mask)
    if corrupt_prob > 0:
        corrupt = ~masked & (torch.rand(size, length, generator=generator) < corrupt_prob)
        random_tokens = torch.randint(0, vocab_size, (size, length), generator=generator)
        noisy = torch.where(corrupt, random_tokens, noisy)
    input_ids = torch.cat([batch.prompt_ids, noisy], 1)
    attention = torch.cat([batch.prompt_mask, torch.ones_like(noisy)], 1)
    device = next(policy.model.parameters()).device
    logits = policy.logits(attention_mask=attention.to(device), input_ids=input_ids.to(device), keep=length).float()
    ce = F.cross_entropy(logits.transpose(1, 2), answers.to(device), reduction="none")
    masked, t = masked.to(device), t.to(device)
    loss = ((ce * masked / t).sum(1) / length).mean()
    if corrupt_prob > 0:
        visible = ~masked
        loss = loss + (ce * visible).sum() / visible.sum().clamp(min=1)
    return loss


def block_diffusion_loss(policy: DiffusionPolicy, batch: SFTBatch, mask_eps: float,
                         generator: torch.Generator) -> torch.Tensor:
    """SDAR / BD3-LM's rule for block-diffusion models: every answer block is noised with its own
    t ~ U(mask_eps, 1] and predicted from the clean blocks before it. One packed sequence per
    example (rollouts/block_packing.py) holds the clean prompt + answer and a noised copy of every
    answer block; loss = sum over blocks of the masked positions' CE / t_block, divided by the answer
    length, averaged over the batch (the same bound as the LLaDA loss, block by block)."""
    width, answers = policy.attention_block, batch.answer_ids
    size, length = answers.shape
    packs, masks, levels, blocks = [], [], [], []
    for row in range(size):
        prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()].tolist()
        offset = len(prompt) % width
        block = (torch.arange(length) + offset) // width
        t = mask_eps + (1 - mask_eps) * torch.rand(int(block[-1]) + 1, generator=generator)
        masked = torch.rand(length, generator=generator) < t[block]
        noisy = answers[row].masked_fill(masked, policy.ids.mask).numpy()
        packs.append(pack(prompt, answers[row].numpy(), [(b, noisy) for b in range(len(t))], width, offset))
        masks.append(masked)
        levels.append(t[block])
        blocks.append(block)
    ids, allowed, positions = pack_batch(packs, width, policy.ids.pad)
    device = next(policy.model.parameters()).device
    logits = policy.model(input_ids=ids.to(device), attention_mask=allowed.to(device),
                          position_ids=positions.to(device)).logits
    loss = logits.new_zeros((), dtype=torch.float32)
    for row, packed in enumerate(packs):
        # answer position a of block b sits in copy b (copy k is block k), after this row's left padding
        where = ids.shape[1] - len(packed.ids) + torch.as_tensor(packed.answer_start)[blocks[row]] + torch.arange(length)
        ce = F.cross_entropy(logits[row, where.to(device)].float(), answers[row].to(device), reduction="none")
        loss = loss + (ce * masks[row].to(device) / levels[row].to(device)).sum() / length
    return loss / size


def run_sft(cfg: Config) -> dict:
    """Train, evaluate, checkpoint. Returns the final metrics (incl. `eval/<task>/acc`).

    Config, model and data are checked before anything is written; then the run claims its
    directory (reasoning/rundir.py) for its lifetime."""
    begin(cfg)
    sft = cfg.sft
    micro = sft.micro_batch_size or sft.batch_size
    if sft.batch_size % micro:
        raise ConfigError(f"config key 'sft.micro_batch_size': {micro} must divide sft.batch_size={sft.batch_size}")
    require_training_rows(cfg)
    model, tokenizer = load_model(cfg.model, cfg.rollout.block_length)
    check_lora_targets(model, cfg.model.lora)
    if sft.objective == "block_diffusion" and not hasattr(model, "attention_block_length"):
        raise ConfigError("config key 'sft.objective': block_diffusion trains a block-diffusion model (model.family "
                          "sdar, or an sdar / llada2 checkpoint); this model attends over the whole canvas (use llada)")
    if sft.objective == "block_diffusion" and sft.corrupt_prob > 0:
        raise ConfigError("config key 'sft.corrupt_prob': only the llada objective corrupts visible tokens")
    task = get_task(cfg.data.task)
    splits = task.build(cfg.data)
    check_prompt_lengths(cfg, tokenizer, model, splits)  # as `dlmrl train` does: prompt + gen_length fit the context
    try:
        train = tokenize_sft(splits["train"], task, tokenizer, cfg.rollout.gen_length,
                             cfg.data.chat_template).with_format(columns=["prompt_ids", "answer_ids"])
    except ValueError as exc:
        raise ConfigError(f"data ({task.name}): {exc}") from None
    with claim_run_dir(cfg.run_dir, resume=False, overwrite=cfg.overwrite, what="SFT run", can_resume=False):
        return _sft(cfg, model, tokenizer, task, splits, train, micro)


def _sft(cfg: Config, model, tokenizer, task, splits, train, micro: int) -> dict:
    sft = cfg.sft
    run_dir = cfg.run_dir
    write_resolved(cfg, run_dir)
    model, tokenizer, base_model_dir = base_weights(cfg, model, tokenizer)
    model, _ = make_trainable(cfg, model)

    engine, optimizer = build_engine(
        model, deepspeed_config_path(sft.deepspeed, "sft.deepspeed"), lr=sft.lr, weight_decay=sft.weight_decay,
        warmup_steps=sft.warmup_steps, grad_clip=sft.grad_clip, micro_batch_size=micro,
        grad_accum=sft.batch_size // micro, total_steps=sft.steps, schedule=sft.lr_schedule,
    )
    policy = make_policy(engine, tokenizer, cfg.model.shift_logits)
    raw_model = engine.module
    zero3 = zero_stage(engine) == 3
    logger = MetricsLogger(run_dir, cfg.logging.tensorboard, cfg.logging.wandb, cfg.name, append=False)
    print(f"sft {task.name}: {count_parameters(raw_model) / 1e6:.2f} M parameters "
          f"({count_parameters(raw_model, trainable_only=True) / 1e6:.2f} M trainable), "
          f"{len(train)} training examples, run dir {run_dir}")

    def run_eval(step: int, n: int | None = None, announce: bool = True) -> dict:
        return evaluate_and_log(policy, tokenizer, task, cfg, logger, step, n, splits["test"], announce)

    def checkpoint(step: int, metrics: dict) -> str:
        return save_checkpoint(run_dir, step, raw_model, tokenizer,
                               {"base_model": base_model_dir, "metrics": metrics, "task": task.name}, zero3=zero3)

    # --- training loop ------------------------------------------------------------------
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(train), generator=generator).tolist()
    cursor, start = 0, time.perf_counter()
    engine.train()
    bar = PhaseProgress(f"sft {task.name}", sft.steps, enabled=cfg.logging.progress)
    eval_metrics: dict = {}
    final_step = sft.steps
    for step in range(1, sft.steps + 1):
        step_loss, grad_norm = 0.0, None
        for _ in range(sft.batch_size // micro):
            if cursor + micro > len(order):  # new epoch, new order
                order, cursor = torch.randperm(len(train), generator=generator).tolist(), 0
            batch = collate_sft(train[order[cursor: cursor + micro]], tokenizer.pad_token_id)
            cursor += micro
            if sft.objective == "block_diffusion":
                loss = block_diffusion_loss(policy, batch, sft.mask_eps, generator)
            else:
                loss = llada_loss(policy, batch, sft.mask_eps, sft.corrupt_prob, len(tokenizer), generator)
            engine.backward(loss)
            grad_norm = engine_step(engine)
            step_loss += loss.item() * micro / sft.batch_size
        bar.update(step, loss=step_loss)
        if step % sft.log_every == 0 or step == sft.steps:
            logger.log(step, {"loss": step_loss, "lr": optimizer.param_groups[0]["lr"],
                              "grad_norm": grad_norm if grad_norm is not None else float("nan"),
                              "timing_s/elapsed": time.perf_counter() - start})
        if sft.target_accuracy and step % sft.target_every == 0 and step != sft.steps:
            reached = run_eval(step, sft.target_n, announce=False)[f"eval/{task.name}/acc"]
            bar.update(step, acc=reached)
            if reached >= sft.target_accuracy:
                tqdm.write(f"step {step}: held-out accuracy {reached:.3f} >= sft.target_accuracy "
                           f"{sft.target_accuracy}: stopping here")
                final_step = step
                break
        if sft.eval_every and step % sft.eval_every == 0 and step != sft.steps:
            eval_metrics = run_eval(step)
            bar.update(step, acc=eval_metrics[f"eval/{task.name}/acc"])
        if sft.checkpoint_every and step % sft.checkpoint_every == 0 and step != sft.steps:
            checkpoint(step, eval_metrics)
    bar.close()

    eval_metrics = run_eval(final_step)
    path = checkpoint(final_step, eval_metrics)
    logger.close()
    final = {"task": task.name, "steps": final_step, "loss": step_loss, "checkpoint": path,
             "seconds": time.perf_counter() - start, **eval_metrics}
    with open(os.path.join(run_dir, "sft_result.json"), "w") as fh:
        json.dump(final, fh, indent=2)
    return final


def sft_warm_start(cfg: Config) -> Config:
    """`trainer.sft_warm_start`: masked-diffusion SFT with the `sft` block first (reused when a
    previous attempt finished it), then RL from that checkpoint."""
    sft_cfg = dataclasses.replace(cfg, output_dir=cfg.run_dir, name="sft", overwrite=True)  # this run's own subdir
    done = complete_checkpoints(sft_cfg.run_dir)
    if not done or not os.path.isfile(os.path.join(sft_cfg.run_dir, "sft_result.json")):
        print(f"SFT warm start: {cfg.sft.steps} steps into {sft_cfg.run_dir}")
        run_sft(sft_cfg)
        done = complete_checkpoints(sft_cfg.run_dir)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=done[-1]))
