"""Post-training quantization techniques (``PostTrainingQuantizer(techniques=[...])``).

Each technique is a class registered under its name in :mod:`.registry`. A technique runs at one
stage of :meth:`PostTrainingQuantizer.calibrate`:

- ``'float'``: before any range is observed; rewrites float weights so that the float model's output
  is unchanged (cross-layer equalization, SmoothQuant-style smoothing);
- ``'quantized'``: after the activation ranges are fixed; adjusts weights / biases against their
  quantized versions (bias correction, AdaRound).

A technique that does not apply to a layer records that layer and the reason in its
:class:`TechniqueReport`; the other layers and techniques still run.

Example:

>>> from slimkit.algorithms.quantization.techniques import TECHNIQUES, resolve_techniques
>>> [technique.name for technique in resolve_techniques(['bias_correction', 'equalize'])]
['equalize', 'bias_correction']
"""

from slimkit.algorithms.quantization.techniques.adaround import AdaRound
from slimkit.algorithms.quantization.techniques.bias_correction import BiasCorrection
from slimkit.algorithms.quantization.techniques.equalize import Equalize
from slimkit.algorithms.quantization.techniques.gptq_rounding import GPTQRounding
from slimkit.algorithms.quantization.techniques.registry import (
    STAGES,
    TECHNIQUES,
    Technique,
    TechniqueReport,
    register_technique,
    resolve_techniques,
)
from slimkit.algorithms.quantization.techniques.smooth import Smooth

__all__ = ["STAGES", "TECHNIQUES", "AdaRound", "BiasCorrection", "Equalize", "GPTQRounding", "Smooth", "Technique",
           "TechniqueReport", "register_technique", "resolve_techniques"]
