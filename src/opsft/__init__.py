"""opsft: on-policy supervised fine-tuning.

Train with any loss of the family from your own TRL script (`SFTConfig(loss_type="idft")`, `SFTTrainer`),
diagnose how far SFT data lies from a model's own distribution (DDT, `score_examples`), and the pieces every
later step stands on: `load_model`, `load_examples`, `tokenize_example`.
"""

from .engine.phi_callback import PhiCallback
from .engine.scoring import ScoredExample, score, score_examples, score_token_ids
from .engine.sft_config import SFTConfig
from .engine.sft_trainer import SFTTrainer
from .inputs.data import Example, LoadedData, load_examples
from .inputs.models import load_model
from .inputs.rendering import tokenize_example
from .methods.ddt import phi_statistics, token_phi
from .runtime.errors import DataError, OpsftError

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "Example",
    "LoadedData",
    "OpsftError",
    "PhiCallback",
    "SFTConfig",
    "SFTTrainer",
    "ScoredExample",
    "load_examples",
    "load_model",
    "phi_statistics",
    "score",
    "score_examples",
    "score_token_ids",
    "token_phi",
    "tokenize_example",
]
