"""Checkpoints in save_pretrained format, written atomically.

A checkpoint is built in a hidden temp directory and renamed into place only once
complete, so a crash mid-write never leaves something that looks like a checkpoint.
`trainer_state.json` is written last: its presence marks a complete checkpoint.

    checkpoints/step_000140/
        config.json, model.safetensors, tokenizer files   (full fine-tune)
        adapter/                                           (LoRA: PeftModel.from_pretrained)
        trainer_state.json                                 (step, base_model, metrics)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import torch

from reasoning.schema import ConfigError

STATE_FILE = "trainer_state.json"


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


@contextlib.contextmanager
def writing(directory: str):
    """Turn a full disk met while writing under `directory` — an OSError(ENOSPC), or the
    "unexpected pos" / "file write failed" RuntimeError torch.save raises for it — into one
    OSError that says so and names the directory and its free space."""
    import errno

    try:
        yield
    except (OSError, RuntimeError) as exc:
        text = str(exc)
        full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (
            isinstance(exc, RuntimeError) and ("unexpected pos" in text or "file write failed" in text))
        if not full:
            raise
        try:
            free = f"{shutil.disk_usage(directory).free / 2 ** 20:.1f} MiB free"
        except OSError:
            free = "free space unknown"
        raise OSError(errno.ENOSPC, f"no space left on the device while writing to '{directory}' ({free}); "
                                    f"free some space, then resume with trainer.resume=auto") from None


def save_checkpoint(run_dir: str, step: int, model: torch.nn.Module, tokenizer, state: dict,
                    zero3: bool = False, extra=None) -> str:
    """Write checkpoints/step_NNNNNN atomically; returns its path.

    `extra(tmp_dir)` may add more (optimizer state, RNG) before trainer_state.json marks it complete.
    A full disk is reported as one OSError naming the directory (`writing`)."""
    root = os.path.join(run_dir, "checkpoints")
    with writing(root):
        return _save_checkpoint(root, step, model, tokenizer, state, zero3, extra)


def _save_checkpoint(root: str, step: int, model: torch.nn.Module, tokenizer, state: dict, zero3: bool,
                     extra) -> str:
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, checkpoint_name(step))
    tmp = os.path.join(root, f".tmp-{checkpoint_name(step)}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        return _write_into(tmp, final, step, model, tokenizer, state, zero3, extra)
    except BaseException:  # nothing half-written stays: the newest complete checkpoint is untouched
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_into(tmp: str, final: str, step: int, model, tokenizer, state: dict, zero3: bool, extra) -> str:
    with gathered(model, zero3):
        if is_peft(model):
            model.save_pretrained(os.path.join(tmp, "adapter"))
        else:
            model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if extra is not None:
        extra(tmp)
    with open(os.path.join(tmp, STATE_FILE), "w") as fh:
        json.dump({"step": step, **state}, fh, indent=2)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


@contextlib.contextmanager
def gathered(model: torch.nn.Module, zero3: bool, parameters: list | None = None):
    """Under ZeRO-3 parameters are sharded; gather them (all, or just `parameters`) as full tensors."""
    if not zero3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(parameters or list(model.parameters()), modifier_rank=None):
        yield


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def is_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, STATE_FILE))


def complete_checkpoints(run_dir: str) -> list[str]:
    """Complete checkpoints of a run, oldest first. Temp dirs and directories without
    trainer_state.json (a write that was killed) are ignored."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("step_") and is_checkpoint(os.path.join(root, n)))
    return [os.path.join(root, n) for n in names]


def prune_checkpoints(run_dir: str, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints, and stale temp dirs."""
    root = os.path.join(run_dir, "checkpoints")
    for path in complete_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    for name in os.listdir(root) if os.path.isdir(root) else []:
        if name.startswith(".ds-") or (name.startswith(".tmp-") and not name.endswith(f"-{os.getpid()}")):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def load_checkpoint(path: str, dtype: torch.dtype = torch.float32, family: str = "auto",
                    trust_remote_code: bool = False, attention_block: int | None = None):
    """(model, tokenizer, state) from a checkpoint directory (full or LoRA); `attention_block` as
    rollouts.families.load_pretrained takes it (the run's rollout.block_length)."""
    from rollouts.families import load_pretrained, load_tokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory '{path}' does not exist")
    if not is_checkpoint(path):
        raise ValueError(f"'{path}' is not a complete dlmrl checkpoint (no {STATE_FILE})")
    state = read_state(path)
    tokenizer = load_tokenizer(path, trust_remote_code)
    adapter = os.path.join(path, "adapter")
    if os.path.isdir(adapter):
        from peft import PeftModel

        base = load_pretrained(state["base_model"], dtype, family, trust_remote_code, attention_block)
        model = PeftModel.from_pretrained(base, adapter)
    else:
        model = load_pretrained(path, dtype, family, trust_remote_code, attention_block)
    return model, tokenizer, state


def read_state(checkpoint: str) -> dict:
    """A checkpoint's trainer_state.json; a ConfigError naming the file if it is not a JSON object."""
    path = os.path.join(checkpoint, STATE_FILE)
    try:
        with open(path) as fh:
            state = json.load(fh)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"checkpoint file '{path}' is not valid JSON ({exc}); the checkpoint is damaged") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ConfigError(f"checkpoint file '{path}': expected a JSON object with an integer 'step'")
    return state


def find_resume(resume: str, run_dir: str, key: str = "trainer.resume", kind: str = "RL") -> str | None:
    """The checkpoint `key` names: none, the newest complete one (auto), or a path — checked (complete,
    readable, a `kind` checkpoint with optimizer state: RL, or preference) before the run claims its directory."""
    if resume == "none":
        return None
    if resume == "auto":
        found = complete_checkpoints(run_dir)
        if not found:
            return None
        resume = found[-1]
    elif not is_checkpoint(resume):
        raise ConfigError(f"config key '{key}': '{resume}' is not a complete checkpoint (no trainer_state.json)")
    state = read_state(resume)
    mine = "policy_version" in state if kind == "RL" else state.get("kind") == kind
    if not mine or not os.path.isdir(os.path.join(resume, "ds")):
        raise ConfigError(f"config key '{key}': '{resume}' is not {'an' if kind == 'RL' else 'a'} {kind} checkpoint "
                          f"(it has no {kind} optimizer state); start from it with model.path={resume}")
    return resume


def check_resume_fits(checkpoint: str, model: torch.nn.Module, lora_enabled: bool, lora_r: int, world: int,
                      key: str = "trainer.resume") -> None:
    """Before the run directory is claimed: `checkpoint` was written by as many trainer processes,
    with (or without) LoRA as this run, of the same rank, and its tensors have this model's shapes."""
    from rollouts.families import checkpoint_tensors

    state = read_state(checkpoint)
    saved_world = int(state.get("world_size", 1))
    if saved_world != world:
        raise ConfigError(f"config key '{key}': '{checkpoint}' was written by {saved_world} trainer "
                          f"process(es) (an optimizer shard and RNG state each); resume it with {saved_world}, not {world}")
    adapter = os.path.join(checkpoint, "adapter")
    if os.path.isdir(adapter) != lora_enabled:
        kind = "a LoRA adapter" if os.path.isdir(adapter) else "full weights"
        raise ConfigError(f"config key 'model.lora.enabled': '{checkpoint}' holds {kind}; set model.lora.enabled="
                          f"{str(not lora_enabled).lower()} to resume it")
    if lora_enabled:
        for name, (file, shape, _) in sorted(_tensor_headers(os.path.join(adapter, "adapter_model.safetensors")).items()):
            if ".lora_A." in name and shape[0] != lora_r:
                raise ConfigError(f"config key 'model.lora.r': {file} holds rank-{shape[0]} adapters ('{name}'); "
                                  f"this run has r={lora_r}")
        return
    shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    for name, (file, shape, _) in sorted(checkpoint_tensors(checkpoint).items()):
        if name in shapes and shapes[name] != shape:
            raise ConfigError(f"config key '{key}': {file}: tensor '{name}' has shape {list(shape)}, but "
                              f"this run's model has {list(shapes[name])} (a different model.tiny / model.path?)")


def _tensor_headers(file: str) -> dict[str, tuple[str, tuple[int, ...], str]]:
    from safetensors import safe_open

    if not os.path.isfile(file):
        raise ConfigError(f"config key 'trainer.resume': '{file}' is missing")
    try:
        with safe_open(file, "pt") as fh:
            return {n: (file, tuple(fh.get_slice(n).get_shape()), fh.get_slice(n).get_dtype()) for n in fh.keys()}
    except Exception as exc:  # noqa: BLE001 — safetensors raises several types for a corrupt file
        raise ConfigError(f"config key 'trainer.resume': '{file}' is not a readable safetensors file ({exc})") from None


def truncate_metrics(run_dir: str, step: int) -> None:
    """Drop metrics logged after `step` (by a run that died before its next checkpoint)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return
    with open(path) as fh:
        kept = [line for line in fh if line.strip() and json.loads(line).get("step", 0) <= step]
    with open(path, "w") as fh:
        fh.writelines(kept)
