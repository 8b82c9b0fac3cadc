"""Loading and writing real DLM snapshots with a weight-name mapping (no remote code).

A native family builds a stock transformers model (Llama, Qwen2) whose parameters are
the snapshot's under other names. Before any weight is read, the snapshot's safetensors
headers are checked against the model its config.json describes: a missing, extra or
mis-shaped tensor is an error naming the file and the tensor — never a silent random
init. transformers' `from_pretrained` then does the loading (sharded files, the
checkpoint's dtype straight into the target dtype, no second fp32 copy) through an
exact per-tensor `key_mapping`. `export` writes merged weights back under the original
names, sharded like the input.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Callable

import torch

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class ModelLoadError(ValueError):
    """A snapshot that cannot be loaded as asked; the message names the file (and tensor or key)."""


def read_config(path: str) -> dict:
    """config.json of a model directory, with errors that name the file."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise ModelLoadError(f"model directory '{path}' does not exist")
    if not os.path.isfile(config_file):
        raise ModelLoadError(f"'{path}' has no config.json (expected a model snapshot or save_pretrained directory)")
    try:
        with open(config_file) as fh:
            config = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"'{config_file}' is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"'{config_file}': expected a JSON object")
    return config


def weight_files(path: str) -> list[str]:
    """The snapshot's safetensors files: the shards of model.safetensors.index.json, or model.safetensors."""
    index = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as fh:
            weight_map = json.load(fh).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"'{index}' has no weight_map")
        files = sorted(set(weight_map.values()))
        for name in files:
            if not os.path.isfile(os.path.join(path, name)):
                raise ModelLoadError(f"'{index}' lists shard '{name}', which is missing from '{path}'")
        return [os.path.join(path, name) for name in files]
    single = os.path.join(path, SINGLE_FILE)
    if os.path.isfile(single):
        return [single]
    raise ModelLoadError(f"'{path}' has no {SINGLE_FILE} or {INDEX_FILE} (only safetensors snapshots are read)")


def checkpoint_tensors(path: str) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """name -> (file, shape, dtype) from the safetensors headers alone (no tensor is read)."""
    from safetensors import safe_open

    found = {}
    for file in weight_files(path):
        try:
            with safe_open(file, "pt") as fh:
                for name in fh.keys():
                    piece = fh.get_slice(name)
                    found[name] = (file, tuple(piece.get_shape()), piece.get_dtype())
        except Exception as exc:  # noqa: BLE001 — safetensors raises several types for a corrupt file
            raise ModelLoadError(f"'{file}' is not a readable safetensors file: {exc}") from None
    return found


def require(config: dict, required: dict, family: str, where: str) -> None:
    """A ModelLoadError for the first config.json setting that changes the maths in a way the
    native `family` does not implement (`required`: key -> the value every release uses)."""
    for key, value in required.items():
        if key in config and config[key] != value:
            raise ModelLoadError(f"{where}: '{key}' = {config[key]!r} is not supported by the native {family} "
                                 f"family (expected {value!r})")


def rename(name: str, pairs: list[tuple[str, str]], source: int) -> str | None:
    """Map a tensor name with (upstream, native) template pairs; `{i}` stands for a layer index.
    source 0: upstream -> native; 1: native -> upstream. None if no pair matches."""
    for pair in pairs:
        pattern = "^" + re.escape(pair[source]).replace(re.escape("{i}"), r"(\d+)") + "$"
        match = re.match(pattern, name)
        if match:
            target = pair[1 - source]
            return target.replace("{i}", match.group(1)) if match.groups() else target
    return None


def expected_shapes(model_class, config) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the model `config` describes, built on the meta device (no memory)."""
    with torch.device("meta"):
        skeleton = model_class(config)
    shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        shapes.pop("lm_head.weight", None)  # tied to the input embedding, not stored
    return shapes


def check_weights(path: str, family: str, model_class, config, to_native: Callable[[str], str | None]) -> dict:
    """{upstream name: native name} for every tensor of the snapshot, or a ModelLoadError naming
    the first tensor that is missing, extra or of the wrong shape."""
    expected = expected_shapes(model_class, config)
    mapping = {}
    for name, (file, shape, _) in sorted(checkpoint_tensors(path).items()):
        native = to_native(name)
        if native is None or native not in expected:
            raise ModelLoadError(f"{file}: tensor '{name}' is not part of a {family} model (extra tensor; "
                                 f"is config.json the checkpoint's own?)")
        if shape != expected[native]:
            raise ModelLoadError(f"{file}: tensor '{name}' has shape {list(shape)} but config.json implies "
                                 f"{list(expected[native])}")
        mapping[name] = native
    missing = sorted(set(expected) - set(mapping.values()))
    if missing:
        raise ModelLoadError(f"{path}: the weights lack {len(missing)} tensor(s) the config implies, e.g. "
                             f"'{missing[0]}' (native name); refusing to initialise them at random")
    return mapping


def load_native(path: str, family: str, model_class, config, to_native, dtype: torch.dtype) -> torch.nn.Module:
    """Check the snapshot's tensors, then load it through `from_pretrained` with the name mapping."""
    mapping = check_weights(path, family, model_class, config, to_native)
    key_mapping = {"^" + re.escape(upstream) + "$": native for upstream, native in mapping.items()}
    model = model_class.from_pretrained(path, config=config, key_mapping=key_mapping, dtype=dtype)
    # transformers would undo `key_mapping` in save_pretrained (writing the regexes' "^…$" into the
    # names): a dlmrl checkpoint of this model is a stock one, under the native names
    model._weight_conversions = []
    model.config.dlm_family = family
    return model


def renamed_state(state: dict[str, torch.Tensor], to_upstream: Callable[[str], str | None]) -> dict:
    """A state dict under the snapshot's names, for families whose tensors map one to one."""
    out = {}
    for native, tensor in state.items():
        upstream = to_upstream(native)
        if upstream is None:
            raise ModelLoadError(f"export: no original name for tensor '{native}'")
        out[upstream] = tensor
    return out


def export(model: torch.nn.Module, source: str, out_dir: str, to_upstream_state: Callable[[dict], dict]) -> list[str]:
    """Write `model`'s weights under the snapshot's original names, sharded and typed like `source`,
    with every non-weight file of `source` (config, tokenizer, template) copied unchanged.
    `to_upstream_state` converts the state dict: `renamed_state` for one-to-one names, or the
    family's own conversion where tensors are fused or split differently upstream (llada2)."""
    from safetensors.torch import save_file

    layout = checkpoint_tensors(source)
    by_upstream = {name: t for name, t in to_upstream_state(model.state_dict()).items() if name in layout}
    missing = sorted(set(layout) - set(by_upstream))
    if missing:
        raise ModelLoadError(f"export: the model has no tensor for '{missing[0]}' of {source}")
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise ModelLoadError(f"export: '{out_dir}' exists and is not empty; choose a new directory")
    tmp = out_dir.rstrip("/") + ".tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    weight_names = {os.path.basename(f) for f in weight_files(source)} | {INDEX_FILE}
    for name in os.listdir(source):
        full = os.path.join(source, name)
        if name not in weight_names and os.path.isfile(full):
            shutil.copy2(full, os.path.join(tmp, name))
    shards: dict[str, dict[str, torch.Tensor]] = {}
    for upstream, (file, _, dtype) in layout.items():
        tensor = by_upstream[upstream].detach().to("cpu", getattr(torch, _TORCH_DTYPES.get(dtype, "float32")))
        shards.setdefault(os.path.basename(file), {})[upstream] = tensor.contiguous()
    for file, tensors in shards.items():
        save_file(tensors, os.path.join(tmp, file), metadata={"format": "pt"})
    if os.path.isfile(os.path.join(source, INDEX_FILE)):
        with open(os.path.join(source, INDEX_FILE)) as fh:
            index = json.load(fh)
        index["metadata"] = {**index.get("metadata", {}), "total_size": sum(
            t.numel() * t.element_size() for tensors in shards.values() for t in tensors.values())}
        with open(os.path.join(tmp, INDEX_FILE), "w") as fh:
            json.dump(index, fh, indent=2)
    if os.path.isdir(out_dir):
        os.rmdir(out_dir)  # empty (checked above)
    os.replace(tmp, out_dir)
    return sorted(os.listdir(out_dir))


_TORCH_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
