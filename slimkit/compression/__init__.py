"""The framework-neutral core: config_list, the compressor lifecycle, mask arithmetic.

Nothing here imports a deep-learning framework; adapters in ``slimkit.frameworks`` do.
"""

from slimkit.compression.compressor import Compressor, Layer, Pruner
from slimkit.compression.config import ConfigKey, LayerConfig

__all__ = ["Compressor", "ConfigKey", "Layer", "LayerConfig", "Pruner"]
