"""Quantizers. Each quantizes a PyTorch model or a Keras model (see docs/keras.md).

Example:

>>> from slimkit.algorithms.quantization import QAT_Quantizer, QATQuantizer
>>> QAT_Quantizer is QATQuantizer
True
"""

from slimkit.algorithms.quantization.bnn import BNNQuantizer
from slimkit.algorithms.quantization.dorefa import DoReFaQuantizer
from slimkit.algorithms.quantization.naive import NaiveQuantizer
from slimkit.algorithms.quantization.ptq import PostTrainingQuantizer
from slimkit.algorithms.quantization.qat import QAT_Quantizer, QATQuantizer
from slimkit.algorithms.quantization.weight_only import WeightOnlyQuantizer

__all__ = ["BNNQuantizer", "DoReFaQuantizer", "NaiveQuantizer", "PostTrainingQuantizer", "QATQuantizer",
           "QAT_Quantizer",
           "WeightOnlyQuantizer"]
