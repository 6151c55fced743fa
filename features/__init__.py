"""Prompt normalisation and the versioned feature extractor the router scores. Imports nothing
of promptroute's other packages."""

from features.extractor import FEATURE_VERSION, PromptFeaturizer
from features.text import Prompt, PromptError, from_messages, normalize

__all__ = [
    "FEATURE_VERSION",
    "Prompt",
    "PromptError",
    "PromptFeaturizer",
    "from_messages",
    "normalize",
]
