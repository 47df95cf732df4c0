"""opsft: on-policy supervised fine-tuning.

Diagnose how far SFT data lies from a model's own distribution (DDT, `score_examples`), and
the pieces every later step stands on: `load_model`, `load_examples`, `tokenize_example`.
"""

from .data import Example, LoadedData, load_examples
from .ddt import phi_statistics, token_phi
from .errors import DataError, OpsftError
from .models import load_model
from .rendering import tokenize_example
from .scoring import ScoredExample, score_examples, score_token_ids

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "Example",
    "LoadedData",
    "OpsftError",
    "ScoredExample",
    "load_examples",
    "load_model",
    "phi_statistics",
    "score_examples",
    "score_token_ids",
    "token_phi",
    "tokenize_example",
]
