"""Tiny models for the tests: a byte-level BPE tokenizer trained here and a 2-layer Llama built from a config."""

from __future__ import annotations

import os

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "A carpenter works for 2 weeks every month and earns 195 pounds a day. How much in a year?",
    "The answer is 42. First add 17 and 25, then check the sum. #### 42",
    "Let x be the number of apples. Then 3x + 4 = 19, so x = 5.",
    "Solve the problem step by step and give the final answer.",
    "hello world, this is a small corpus for a tiny tokenizer: 0 1 2 3 4 5 6 7 8 9 + - * / = ( )",
] * 20


def make_tokenizer(chat_template: str | None = CHATML) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<pad>")
    tokenizer.chat_template = chat_template
    return tokenizer


def make_model(vocab_size: int, seed: int = 0, *, init: float = 0.5, **overrides) -> LlamaForCausalLM:
    """A 2-layer Llama whose next-token distributions are far from uniform (large init), so phi has signal."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=init, tie_word_embeddings=False, pad_token_id=0, bos_token_id=None,
                         eos_token_id=2, **overrides)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    return make_model(len(tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer, tiny_model):
    """The tiny model and tokenizer saved as a local checkpoint, for the loader and the CLI."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def launch(processes: int, *args: str, timeout: int = 300, fails: bool = False):
    """`accelerate launch --multi_gpu --num_processes N -m opsft.cli ARGS` on CPU (gloo), one thread a process;
    a failing run shows its output (with `fails`, a run that succeeds does). The finished process."""
    import os
    import subprocess
    import sys

    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    run = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "-m", "opsft.cli",
                          *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (run.returncode != 0) == fails, f"accelerate launch: exit {run.returncode}:\n{run.stdout[-3000:]}\n" \
                                           f"{run.stderr[-6000:]}"
    return run


# The accelerator the tests marked `gpu` run on: CUDA where there is one, or OPSFT_TEST_DEVICE (the GPU check's dry
# run sets it to cpu, so that those tests' plumbing runs in CI too). Tests take `device` from DEVICES: always the CPU,
# and the accelerator as a `gpu`-marked case.
ACCELERATOR = os.environ.get("OPSFT_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
DEVICES = ["cpu"] + ([pytest.param(ACCELERATOR, marks=pytest.mark.gpu, id=f"gpu-{ACCELERATOR}")]
                     if ACCELERATOR else [])
