"""Block-diffusion snapshots (tests/fixtures/blockarch, written by the upstream code): loaded natively
with the family's block-causal attention, they reproduce the upstream forward (ref.pt)."""

import json
import os

import pytest
import torch

from rollouts import load_pretrained, load_tokenizer
from rollouts.families import detect, read_config

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "blockarch")


def fixture(kind):
    return os.path.join(HERE, kind, "ckpt"), torch.load(os.path.join(HERE, kind, "ref.pt"), weights_only=False)


def test_sdar_reproduces_the_upstream_logits_with_its_mask_and_with_none():
    path, ref = fixture("sdar")
    assert detect(read_config(path)) == "sdar"
    model = load_pretrained(path).eval()  # family auto
    assert model.config.dlm_family == "sdar" and model.config.block_length == ref["block_length"] == 4
    with torch.no_grad():
        given = model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).logits
        built = model(input_ids=ref["input_ids"]).logits  # the family's block-causal mask, block length 4
        padded = model(input_ids=ref["input_ids"], attention_mask=torch.ones_like(ref["input_ids"])).logits
    for logits in (given, built, padded):
        assert (logits - ref["logits"]).abs().max() < 1e-4


def test_sdar_left_padding_changes_nothing_for_the_real_tokens():
    """Blocks count from each row's first real token, so a left-padded row keeps its logits."""
    path, ref = fixture("sdar")
    model = load_pretrained(path).eval()
    ids = ref["input_ids"][:1]
    padded = torch.cat([torch.full((1, 3), 96), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], 1)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        shifted = model(input_ids=padded, attention_mask=mask,
                        position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, 3:]
    assert (plain - shifted).abs().max() < 1e-4


def test_sdar_tokenizer_and_manifest_names():
    path, _ = fixture("sdar")
    tokenizer = load_tokenizer(path)
    assert tokenizer.mask_token == "<|MASK|>" and tokenizer.mask_token_id == 101
    from rollouts.families import sdar
    from rollouts.families.native import expected_shapes

    manifest = json.load(open(os.path.join(HERE, "sdar-8b-chat.manifest.json")))
    shapes = expected_shapes(sdar.MODEL_CLASS, sdar.native_config(manifest["config"]))
    assert shapes == {name: tuple(shape) for name, shape in manifest["state_dict"].items()}
    assert len(shapes) == manifest["tensors"] == 399
    assert sum(torch.Size(shape).numel() for shape in shapes.values()) == manifest["parameters"] == 8_190_735_360


def test_sdar_bad_mask_shape_names_the_family():
    from rollouts.families import ModelLoadError

    path, ref = fixture("sdar")
    model = load_pretrained(path).eval()
    with pytest.raises(ModelLoadError, match="sdar: attention_mask of shape"):
        model(input_ids=ref["input_ids"], attention_mask=torch.ones(2, 1, 5, 5))
