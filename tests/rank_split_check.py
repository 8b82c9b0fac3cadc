"""Run under torchrun with 1 or 2 processes: one trainer update (reasoning.update.update, DeepSpeed ZeRO-0,
plain SGD with lr 1) on a fixed batch, split by prompt over the ranks. Rank 0 writes the weight change
for each objective in argv[1] (comma-separated) to argv[3]; the test compares the 1- and 2-process
results (the same gradient either way). Plain SGD keeps no state, so the weights are simply restored
between objectives."""

import os
import sys

import torch

from reasoning.config import deepspeed_config_path
from reasoning.engine import build_engine
from reasoning.objectives import StepBatch, build_objective
from reasoning.update import Learner, update as _update
from reasoning.advantages import group_advantages
from rollouts import DecodingConfig, DiffusionPolicy, TokenIds, sample
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(1)
names, micro_batches, out = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3]
torch.manual_seed(8)
config = LlamaConfig(vocab_size=6, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=2, max_position_embeddings=16, tie_word_embeddings=False, pad_token_id=2,
                     eos_token_id=2, bos_token_id=None)
config.is_causal = False
model = LlamaForCausalLM(config).eval()
start = {k: v.clone() for k, v in model.state_dict().items()}
engine, optimizer = build_engine(model, deepspeed_config_path("zero0", "trainer.deepspeed"), lr=1.0, grad_clip=1e9,
                                 optimizer_name="sgd", grad_accum=micro_batches)
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
policy = DiffusionPolicy(engine.module, TokenIds(mask=1, pad=2, eos=2))
cfg = DecodingConfig(gen_length=4, temperature=1.0, confidence="max_prob", selection_temperature=0.5)
prompts = [[4, 5], [5, 4, 3], [3, 3], [4]]
group = 4
with torch.no_grad():
    trajectories = sample(policy, [p for p in prompts for _ in range(group)], cfg, seeds=list(range(16)))
for i, t in enumerate(trajectories):
    t.prompt_index, t.sample_index = i // group, i % group
rewards = [float((t.final_tokens == 3).sum()) + 0.01 * i for i, t in enumerate(trajectories)]
adv = group_advantages(rewards, group, normalize_std=True).values
mine = [i for i, t in enumerate(trajectories) if t.prompt_index % world == rank]
batch = StepBatch([trajectories[i] for i in mine], adv[mine], cfg, (2,))
deltas = {}
for name in names:
    engine.module.load_state_dict(start)
    objective = build_objective(name, spg_block=2)
    _update(Learner(engine, optimizer, policy, objective, micro_batches, 1, False, world), batch,
            torch.Generator().manual_seed(5))
    deltas[name] = {k: v - start[k] for k, v in engine.module.state_dict().items()}
if rank == 0:
    torch.save(deltas, out)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
