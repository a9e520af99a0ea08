"""metallic: LLM inference with a compiled native core.

>>> import metallic
>>> with metallic.load() as model:            # the default model (SmolLM2-135M-Instruct)
...     print(model.generate("The capital of France is", max_tokens=8))
"""

from . import errors
from ._load import load
from .generate import GenerationResponse
from .model import Model
from .sampling import SamplingParams

__version__ = "0.1.0"

__all__ = ["load", "Model", "GenerationResponse", "SamplingParams", "errors", "__version__"]
