"""opsft: on-policy supervised fine-tuning.

Train with any loss of the family from your own TRL script (`SFTConfig(loss_type="idft")`, `SFTTrainer`), watch
how on-policy the batches are (`PhiCallback`); diagnose how far a dataset lies from a model's own distribution
(`score`), re-align it into the model's own words (`realign`), or replace it with the model's own correct answers
(`rejection_samples`) or preference pairs (`preference_pairs`), each a datasets.Dataset in and out; measure accuracy
(`evaluate`). The commands of the `opsft` CLI run these same functions. Also the pieces every step stands on:
`load_model`, `load_examples`, `tokenize_example`, `token_phi`.
"""

from .engine.evaluation import evaluate
from .engine.phi_callback import PhiCallback
from .engine.preference_pairs import preference_pairs
from .engine.realignment import realign
from .engine.rejection_sampling import rejection_samples
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
    "evaluate",
    "load_examples",
    "load_model",
    "phi_statistics",
    "preference_pairs",
    "realign",
    "rejection_samples",
    "score",
    "score_examples",
    "score_token_ids",
    "token_phi",
    "tokenize_example",
]
