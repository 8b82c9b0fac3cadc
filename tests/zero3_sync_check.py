"""Run under `torchrun --nproc_per_node 2`: one LoRA update of a ZeRO-3 trainer, then a weight sync
to an in-process rollout worker. Each rank checks — without using the sync code's own gathering —
that the worker's adapter equals the trainer's full (gathered) adapter and that both give the same
logits. Prints one JSON line per rank; exits non-zero on a mismatch."""

import json
import os
import sys

import deepspeed
import torch

from reasoning.config import deepspeed_config_path
from reasoning.distributed import trainer_weights
from reasoning.engine import build_engine, zero_stage
from reasoning.modeling import LoraConfig, apply_lora, load_model, peft_lora_config, ModelConfig
from rollouts import DecodingConfig, make_policy
from rollouts.workers import PolicySpec, WorkerPool, policy_weights

torch.set_num_threads(1)
base = sys.argv[1]
model, tokenizer = load_model(ModelConfig(path=base))
moe = len(sys.argv) > 3 and sys.argv[3] == "moe"  # LLaDA2: LoRA on the stacked experts too
lora = LoraConfig(enabled=True, r=4, target_modules=["q_proj", "v_proj"],
                  target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"] if moe else [])
model = apply_lora(model, lora)
# the zero3 preset, with every parameter partitioned: by default ZeRO-3 keeps tensors under
# 1e5 elements whole on each rank, which would hide a sync that forgets to gather
preset = json.load(open(deepspeed_config_path("zero3", "trainer.deepspeed")))
preset["zero_optimization"]["stage3_param_persistence_threshold"] = 0
ds_file = os.path.join(sys.argv[2], f"zero3_rank{os.environ['RANK']}.json")
json.dump(preset, open(ds_file, "w"))
engine, _ = build_engine(model, ds_file, lr=0.05)
assert zero_stage(engine) == 3
rank = int(os.environ["RANK"])

ids = torch.tensor([[5, 6, 7, 8, 1, 1, 1, 1]])
mask = torch.ones_like(ids)
engine.eval()
loss = engine(input_ids=ids, attention_mask=mask).logits.float().pow(2).mean()
engine.backward(loss)
engine.step()

group = WorkerPool(PolicySpec(path=base, lora=peft_lora_config(lora, "llada2" if moe else "bidirectional")),
                   DecodingConfig(gen_length=4),
                   num_workers=1, use_ray=False)
group.sync(trainer_weights(engine.module, zero_stage(engine)), version=1)
worker_state = policy_weights(group.workers[0].policy.model)

trained = {n: p for n, p in engine.module.named_parameters() if p.requires_grad}
with deepspeed.zero.GatheredParameters(list(trained.values()), modifier_rank=None):
    full = {n.replace(".default.", "."): p.detach().clone() for n, p in trained.items()}
same_names = sorted(full) == sorted(worker_state)
max_diff = max(float((full[n] - worker_state[n]).abs().max()) for n in full) if same_names else float("inf")
lora_b = max(float(t.abs().max()) for n, t in full.items() if "lora_B" in n)

with torch.no_grad():
    trainer_logits = make_policy(engine.module, tokenizer).logits(attention_mask=mask, input_ids=ids)
    worker_logits = group.workers[0].policy.logits(attention_mask=mask, input_ids=ids)
logit_diff = float((trainer_logits - worker_logits).abs().max())
ok = same_names and max_diff == 0.0 and logit_diff < 1e-5 and lora_b > 0
print(json.dumps({"rank": rank, "tensors": len(full), "max_weight_diff": max_diff, "max_logit_diff": logit_diff,
                  "max_abs_lora_B": lora_b, "ok": ok}), flush=True)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
sys.exit(0 if ok else 1)
