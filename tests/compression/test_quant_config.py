"""config_list validation of quantizers: bad configs raise ConfigError naming index, key and value."""

import pytest
import torch

import slimkit
from slimkit.algorithms.quantization import PostTrainingQuantizer, QATQuantizer


def _model():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8, 2))


@pytest.mark.parametrize("entry, fragments", [
    ({"quant_types": ["weight", "bias"], "op_types": ["Conv2d"]}, ["config_list[1]['quant_types']", "'bias'"]),
    ({"quant_types": ["weight"], "quant_bits": 0, "op_types": ["Conv2d"]}, ["config_list[1]['quant_bits']",
                                                                            "quant_bits=0", "1..32"]),
    ({"quant_types": ["weight"], "quant_bits": 33, "op_types": ["Conv2d"]}, ["config_list[1]['quant_bits']",
                                                                             "quant_bits=33"]),
    ({"quant_types": ["weight"], "quant_bits": {"weight": 33}, "op_types": ["Conv2d"]}, ["quant_bits", "33"]),
    ({"quant_types": ["weight"], "quant_bits": {"bias": 8}, "op_types": ["Conv2d"]}, ["quant_bits", "bias"]),
    ({"quant_bits": 8, "op_types": ["Conv2d"]}, ["config_list[1]", "missing required key 'quant_types'"]),
    ({"quant_types": [], "op_types": ["Conv2d"]}, ["config_list[1]['quant_types']"]),
    ({"quant_types": ["weight"], "quantize_op_action": "skip", "op_types": ["Conv2d"]},
     ["config_list[1]['quantize_op_action']", "'skip'"]),
    ({"quant_types": ["weight"], "quant_bit": 8, "op_types": ["Conv2d"]}, ["unknown key 'quant_bit'",
                                                                           "Did you mean 'quant_bits'"]),
    ({"quant_types": ["weight"], "quant_bits": True, "op_types": ["Conv2d"]}, ["quant_bits=True"]),
])
def test_bad_config_raises_config_error(entry, fragments):
    config_list = [{"quant_types": ["weight"], "op_types": ["Linear"]}, entry]
    with pytest.raises(slimkit.ConfigError) as info:
        PostTrainingQuantizer(_model(), config_list)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_quant_bits_dict_naming_a_type_not_quantized_is_an_error():
    with pytest.raises(slimkit.ConfigError, match="quant_bits"):
        PostTrainingQuantizer(_model(), [{"quant_types": ["weight"], "quant_bits": {"output": 4},
                                          "op_types": ["Conv2d"]}])


def test_quant_start_step_is_a_qat_key_only():
    config = [{"quant_types": ["weight"], "quant_start_step": 10, "op_types": ["Conv2d"]}]
    QATQuantizer(_model(), config)
    with pytest.raises(slimkit.ConfigError, match="unknown key 'quant_start_step'"):
        PostTrainingQuantizer(_model(), config)
    with pytest.raises(slimkit.ConfigError, match=r"quant_start_step=-1"):
        QATQuantizer(_model(), [{"quant_types": ["weight"], "quant_start_step": -1, "op_types": ["Conv2d"]}])


def test_unknown_layer_name_and_bad_algorithm():
    with pytest.raises(slimkit.ConfigError, match="op_names"):
        PostTrainingQuantizer(_model(), [{"quant_types": ["weight"], "op_names": ["conv9"]}])
    with pytest.raises(slimkit.ConfigError, match="algorithm='entropy'"):
        PostTrainingQuantizer(_model(), [{"quant_types": ["weight"], "op_types": ["Conv2d"]}], algorithm="entropy")
    with pytest.raises(slimkit.ConfigError, match="profile='tensorrt'"):
        PostTrainingQuantizer(_model(), [{"quant_types": ["weight"], "op_types": ["Conv2d"]}], profile="tensorrt")


def test_bits_per_type_dict_is_parsed():
    quantizer = PostTrainingQuantizer(_model(), [{"quant_types": ["weight", "output"],
                                                  "quant_bits": {"weight": 4, "output": 6}, "op_types": ["Conv2d"]}])
    state = quantizer.states["0"]
    assert (state.bits[slimkit.compression.QuantType.QUANT_WEIGHT],
            state.bits[slimkit.compression.QuantType.QUANT_OUTPUT]) == (4, 6)


def test_weight_quantization_of_a_layer_without_weight_is_an_error():
    with pytest.raises(slimkit.ConfigError, match="no weight to quantize"):
        PostTrainingQuantizer(_model(), [{"quant_types": ["weight"], "op_types": ["ReLU"]}])
    PostTrainingQuantizer(_model(), [{"quant_types": ["output"], "op_types": ["ReLU"]}])
