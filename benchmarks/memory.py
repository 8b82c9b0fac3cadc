"""Memory a LoRA RL job on LLaDA-8B-Instruct / Dream-v0-Instruct-7B / SDAR-8B-Chat / LLaDA2.0-mini
needs, per process.

    python benchmarks/memory.py [--prompt 256] [--gen 256] [--rank 16] [--kinds llada dream sdar llada2]

From the full-size upstream manifests (tests/fixtures/{realarch,blockarch}/*.manifest.json), nothing
downloaded. Block-diffusion models (sdar, llada2) are replayed in packed sequences of up to twice
prompt + gen tokens (rollouts/block_packing.py), so their activations are measured at that length;
LLaDA2's layer is measured as an MoE layer (its first layer is a smaller dense one).
  weights_gib        every parameter in bf16 (exact count from the manifest)
  lora_params        LoRA parameters on q/k/v/o (peft on the native model built on the meta device)
  lora_train_gib     LoRA weights bf16 + fp32 master copy + fp32 gradient + Adam's two fp32
                     moments (DeepSpeed bf16 with an fp32 optimizer: 2 + 4 + 4 + 8 bytes each)
  activations_gib    what autograd saves for backward for one sample (micro-batch 1) of
                     prompt + gen tokens, measured: one real-width decoder layer with LoRA is run
                     forward in bf16 on the CPU with saved-tensor hooks counting bytes, times the
                     layer count, plus the answer positions' logits/log-softmax (fp32, gen x vocab)
  activations_ckpt_gib the same with gradient checkpointing (the configs' setting): every layer
                     keeps only its input, one layer's activations are live during recompute
With --eval: what one row of `dlmrl eval --protocol d1` needs (no gradients, --eval-batch answers
decoded together, d1's steps = gen / 2 forwards per block-decoded batch, every step over the whole
prompt + gen canvas):
  eval_gib           weights + per answer (one layer's working set, bounded by what the layer saves
                     for backward above, + the answer positions' logits: bf16, fp32 copy, masked
                     copy, log-softmax = 14 bytes x gen x vocab) x eval batch
  eval_forwards      problems / batch x gen / 2 (an upper bound: answers stop at [EOS] blocks)
  eval_hours         2 x parameters x batch x (prompt + gen) FLOPs per forward, at --tflops
                     sustained (an assumption, default 400: about 40 % of an H100's dense bf16)
Attention runs through SDPA on the CPU here; a GPU kernel saves about the same (no S x S matrix
for the memory-efficient/flash kernels, which the CPU math path would show up as larger).
Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from rollouts.families import FAMILIES  # noqa: E402

GIB = 2 ** 30
MANIFESTS = {"llada": "realarch/llada-8b-instruct.manifest.json", "dream": "realarch/dream-v0-instruct-7b.manifest.json",
             "sdar": "blockarch/sdar-8b-chat.manifest.json", "llada2": "blockarch/llada2.0-mini.manifest.json"}
BLOCK = ("sdar", "llada2")  # replayed in packed sequences of up to 2 x (prompt + gen)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def saved_bytes(fn, weights) -> int:
    """Bytes of every tensor autograd saves for backward while `fn()` runs, views counted once per
    storage; the `weights` themselves (saved by reference, already counted as weights) are left out."""
    seen, total = {w.untyped_storage().data_ptr() for w in weights}, 0

    def pack(t):
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def measure(kind: str, prompt: int, gen: int, rank: int) -> dict:
    from peft import LoraConfig, get_peft_model

    manifest = json.load(open(os.path.join(ROOT, "tests", "fixtures", MANIFESTS[kind])))
    family = FAMILIES[kind]
    config = family.native_config(manifest["config"])
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS)
    with torch.device("meta"):
        full = get_peft_model(family.MODEL_CLASS(config), lora)
    lora_params = sum(p.numel() for n, p in full.named_parameters() if "lora_" in n)
    base_params = sum(p.numel() for n, p in full.named_parameters() if "lora_" not in n)
    assert base_params == manifest["parameters"], (base_params, manifest["parameters"])

    # one decoder layer at real width, bf16, LoRA on, base frozen: what does backward keep?
    one = family.native_config({**manifest["config"], **({"n_layers": 1} if kind == "llada" else
                                                         {"num_hidden_layers": 1, "first_k_dense_replace": 0})})
    one.vocab_size, one.pad_token_id = 8, None  # the embedding and head are measured separately below
    torch.manual_seed(0)
    layer_model = get_peft_model(family.MODEL_CLASS(one).to(torch.bfloat16), lora)
    seq = (prompt + gen) * (2 if kind in BLOCK else 1)
    hidden = torch.randn(1, seq, one.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    decoder = layer_model.base_model.model.model
    positions = torch.arange(seq).unsqueeze(0)
    rotary = decoder.rotary_emb(hidden, positions)
    layer = decoder.layers[0]
    per_layer = saved_bytes(lambda: layer(hidden, position_embeddings=rotary, attention_mask=None),
                            list(layer_model.parameters()))
    layer_input = seq * one.hidden_size * 2
    # the answer positions' head: logits -> fp32 log-softmax over the full vocabulary
    vocab, width = manifest["state_dict"]["model.transformer.ff_out.weight" if kind == "llada" else "lm_head.weight"]
    states = torch.randn(1, gen, width, dtype=torch.bfloat16, requires_grad=True)
    head_weight = torch.zeros(vocab, width, dtype=torch.bfloat16)
    head = saved_bytes(lambda: torch.nn.functional.linear(states, head_weight).float().log_softmax(-1), [head_weight])
    layers = config.num_hidden_layers
    eval_per_answer = per_layer + gen * vocab * 14
    return {"eval_per_answer_gib": round(eval_per_answer / GIB, 3), "vocab": vocab,
        "parameters": base_params, "weights_gib": round(base_params * 2 / GIB, 2),
        "lora_params": lora_params, "lora_train_gib": round(lora_params * (2 + 4 + 4 + 8) / GIB, 3),
        "activation_per_layer_mib": round(per_layer / 2 ** 20, 1), "head_mib": round(head / 2 ** 20, 1),
        "activations_gib": round((per_layer * layers + head) / GIB, 2),
        "activations_ckpt_gib": round((layer_input * layers + per_layer + head) / GIB, 2),
        "layers": layers, "tokens": seq,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--gen", type=int, default=256)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--kinds", nargs="+", default=list(MANIFESTS), choices=list(MANIFESTS))
    parser.add_argument("--eval", action="store_true", help="also: memory and time of one d1 protocol row")
    parser.add_argument("--eval-batch", type=int, default=8, help="answers decoded together (d1: 8, 4 at gen 512)")
    parser.add_argument("--eval-problems", type=int, default=1319, help="problems in the split (GSM8K test: 1319)")
    parser.add_argument("--tflops", type=float, default=400.0, help="assumed sustained bf16 TFLOP/s")
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    out = {kind: measure(kind, args.prompt, args.gen, args.rank) for kind in args.kinds}
    for kind, row in out.items():
        total = row["weights_gib"] + row["lora_train_gib"] + row["activations_ckpt_gib"]
        row["total_ckpt_gib"] = round(total, 2)
        per_answer = row.pop("eval_per_answer_gib")
        if args.eval:
            forwards = -(-args.eval_problems // args.eval_batch) * (args.gen // 2)
            flops = 2 * row["parameters"] * args.eval_batch * (args.prompt + args.gen) * forwards
            row.update(eval_gib=round(row["weights_gib"] + per_answer * args.eval_batch, 2), eval_forwards=forwards,
                       eval_hours=round(flops / (args.tflops * 1e12) / 3600, 2))
    print(json.dumps({"prompt_tokens": args.prompt, "gen_length": args.gen, "lora_rank": args.rank,
                      "micro_batch": 1, **({"eval_batch": args.eval_batch, "eval_problems": args.eval_problems,
                                            "assumed_tflops": args.tflops} if args.eval else {}), **out}))


if __name__ == "__main__":
    main()
