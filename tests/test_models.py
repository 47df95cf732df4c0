from __future__ import annotations

import pytest
import torch

from opsft.inputs import models
from opsft.inputs.models import cache_dir, load_model
from opsft.runtime.errors import OpsftError


def test_local_directory_loads_in_fp32_on_cpu(tiny_model_dir, tiny_model):
    model, tokenizer = load_model(str(tiny_model_dir), device="cpu")
    assert model.dtype == torch.float32 and not model.training
    assert tokenizer.pad_token is not None
    assert torch.equal(model.lm_head.weight, tiny_model.lm_head.weight)


def test_unknown_model_is_a_one_line_error():
    with pytest.raises(OpsftError, match=r"unknown model 'no-such/model-xyz': not a built-in alias \(smollm2-135m\)"):
        load_model("no-such/model-xyz")


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OPSFT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("OPSFT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "opsft"


@pytest.mark.slow
def test_smollm2_alias_converts_once_then_loads_the_checkpoint(monkeypatch):
    model, tokenizer = load_model("smollm2-135m", device="cpu")  # converts on first use (about a minute)
    assert (cache_dir() / "models" / "smollm2-135m" / "config.json").exists()
    assert getattr(model.config, "quantization_config", None) is None
    assert model.config.vocab_size == 49152 and tokenizer.chat_template

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("the GGUF file was converted again")

    monkeypatch.setattr(models, "_convert_gguf", no_second_conversion)
    again, _ = load_model("smollm2-135m", device="cpu")
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
