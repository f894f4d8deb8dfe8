"""The framework-neutral core: config_list, the compressor lifecycle, mask arithmetic.

Nothing here imports a deep-learning framework; adapters in ``slimkit.frameworks`` do.
"""

from slimkit.compression.compressor import Compressor, Layer, Pruner
from slimkit.compression.config import ConfigKey, LayerConfig
from slimkit.compression.quant import QuantGrad, QuantType
from slimkit.compression.quantizer import Quantizer

__all__ = ["Compressor", "ConfigKey", "Layer", "LayerConfig", "Pruner", "QuantGrad", "QuantType", "Quantizer"]
