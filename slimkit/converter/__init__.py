"""PyTorch -> TFLite converter (no TensorFlow): ``torch.export`` graph -> IR -> flatbuffer.

Example:

>>> import os, tempfile, torch
>>> from slimkit.converter import TFLiteConverter, verify
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval()
>>> x = torch.randn(1, 3, 16, 16)
>>> path = os.path.join(tempfile.mkdtemp(), 'm.tflite')
>>> TFLiteConverter(model, x, path).convert()
>>> verify(model, x, path).max_rel_error < 1e-5
True
"""

from slimkit.converter.convert import TFLiteConverter
from slimkit.converter.debug import export_converter_files
from slimkit.converter.options import ConverterOptions
from slimkit.converter.quant import QuantTable
from slimkit.converter.registry import register, supported_ops
from slimkit.converter.verify import VerifyResult, verify

__all__ = ["ConverterOptions", "QuantTable", "TFLiteConverter", "VerifyResult", "export_converter_files",
           "register", "supported_ops", "verify"]
