"""Suite-wide environment: CPU DeepSpeed, one torch thread, nothing from a hub."""

import os
import tempfile

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray: a short local temp dir (its socket paths have a length limit), no usage stats
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray", dir="/tmp"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tiny_tokenizer():
    from reasoning.modeling import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture
def tiny_model(tiny_tokenizer):
    from helpers import TINY_SIZES
    from reasoning.modeling import TinyModelConfig, build_tiny_model

    torch.manual_seed(0)
    cfg = TinyModelConfig(**TINY_SIZES)
    return build_tiny_model(cfg, tiny_tokenizer).eval()
