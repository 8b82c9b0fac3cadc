"""The tiny DLM: a stock bidirectional Llama and a char tokenizer, both round-tripping through disk."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasoning.data import decode_completion, encode_answer, encode_prompt
from reasoning.modeling import ModelConfig, TinyModelConfig, count_parameters, load_model


def test_tokenizer_round_trip(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    text = "use 3 5 7 to make 22\n<answer>3*5+7</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len("use 3 5 7 to make 22\n") + len("3*5+7") + 2  # tags are single tokens
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids
    assert loaded.decode(ids) == text
    for name in ("mask_token", "pad_token", "eos_token"):
        assert getattr(loaded, name) == getattr(tok, name)
    assert len({loaded.mask_token_id, loaded.pad_token_id, loaded.eos_token_id}) == 3
    assert loaded.chat_template == tok.chat_template
    assert encode_prompt(loaded, "hi") == loaded("hi\n", add_special_tokens=False)["input_ids"]


def test_answer_canvas_encoding(tiny_tokenizer):
    ids = encode_answer(tiny_tokenizer, "<answer>12</answer>", 8)
    assert len(ids) == 8 and ids[4:] == [tiny_tokenizer.eos_token_id] * 4
    assert decode_completion(tiny_tokenizer, ids) == "<answer>12</answer>"


def test_model_is_bidirectional_and_round_trips(tmp_path, tiny_model):
    model = tiny_model
    assert model.config.is_causal is False
    x = torch.randint(5, 50, (1, 12))
    y = x.clone()
    y[0, -1] = 60  # change only the last token
    with torch.no_grad():
        # position 0 sees the last token: bidirectional, not causal
        assert not torch.allclose(model(x).logits[0, 0], model(y).logits[0, 0])
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.is_causal is False
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits)


def test_default_tiny_preset_is_about_one_million_parameters():
    model, tokenizer = load_model(ModelConfig())
    assert 0.5e6 < count_parameters(model) < 1.5e6
    assert model.config.is_causal is False


def test_load_model_by_path(tmp_path, tiny_model, tiny_tokenizer):
    tiny_model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    model, tok = load_model(ModelConfig(path=str(tmp_path), tiny=TinyModelConfig()))
    assert model.config.hidden_size == tiny_model.config.hidden_size
    assert tok.mask_token_id == tiny_tokenizer.mask_token_id


def test_policy_logits_are_the_models_at_the_answer_positions(tiny_model, tiny_tokenizer):
    """The canvas -> logits adapter: left padding hidden, positions counted from the first real token."""
    from rollouts import DiffusionPolicy, TokenIds
    from rollouts.sampler import left_pad

    policy = DiffusionPolicy(tiny_model, TokenIds.from_tokenizer(tiny_tokenizer))
    prompts = [tiny_tokenizer("abc")["input_ids"], tiny_tokenizer("a longer prompt")["input_ids"]]
    ids, mask = left_pad(prompts, policy.ids.pad)
    answer = torch.full((2, 5), policy.ids.mask)
    canvas, attention = torch.cat([ids, answer], 1), torch.cat([mask, torch.ones_like(answer)], 1)
    with torch.no_grad():
        got = policy.logits(attention_mask=attention, input_ids=canvas, keep=5)
        alone = tiny_model(input_ids=torch.cat([torch.tensor(prompts[0]), answer[0]])[None]).logits[0, -5:]
    assert got.shape == (2, 5, tiny_model.config.vocab_size)
    assert torch.allclose(got[0], alone, atol=1e-5)  # padded row == the same prompt alone
    with pytest.raises(TypeError):
        policy.logits(attention, canvas)  # keyword-only: ids and mask cannot be swapped silently
