"""A calibrate() that fails after a technique changed weights leaves the model and the quantizer exactly as they
were: every state-dict tensor equal, no explicit multiplies ('smooth'), no float reference ('gptq'), no reports."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.algorithms.quantization.techniques import Smooth, Technique
from slimkit.errors import ConfigError, SlimkitError
from tests.algorithms.quantization.techniques.test_smooth import LINEAR_INT8, _block_and_data


class Failing(Technique):
    """A quantized-stage technique that raises: it runs after every float-stage one and the range observation."""

    name: ClassVar[str] = "failing"
    stage: ClassVar[str] = "quantized"

    def apply(self, quantizer, batches):
        raise ConfigError("failing: Expected nothing. Received: a call")


@pytest.mark.parametrize("first", [Smooth(explicit=False), Smooth(), "gptq", "bias_correction"],
                         ids=["smooth folded", "smooth explicit", "gptq", "bias_correction"])
def test_failed_calibrate_after_a_technique_changed_weights_restores_everything(first) -> None:
    model, batches = _block_and_data()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    ptq = PostTrainingQuantizer(model, LINEAR_INT8, dummy_input=batches[0][:1], techniques=[first, Failing()],
                                progress=False)
    quantizer_state = ptq.state_dict()
    before = {id(tensor): tensor.detach().clone() for tensor in model.parameters()}
    changed = []  # the first technique did change weights (or add multiplies) before the failure

    def fail(quantizer, batches):
        changed.append(bool(quantizer.channel_scales) or any(
            not torch.equal(tensor, before[id(tensor)]) for tensor in model.parameters() if id(tensor) in before))
        return Failing.apply(None, quantizer, batches)

    ptq.techniques[-1].apply = fail
    with pytest.raises(ConfigError, match="failing"):
        ptq.calibrate(batches)
    assert changed == [True]
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    assert not ptq.wrapped and ptq.technique_reports == [] and ptq.channel_scales == {} and ptq.float_weights == {}
    assert ptq.state_dict().keys() == quantizer_state.keys() and not ptq.calibrated


def test_a_technique_that_fails_is_named_not_a_batch() -> None:
    """An error that is not a SlimkitError inside a technique names the technique (it used to name the last batch
    index, as if a batch could not run), and the model is as it was."""
    model, batches = _block_and_data()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    ptq = PostTrainingQuantizer(model, LINEAR_INT8, dummy_input=batches[0][:1], techniques=[Failing()],
                                progress=False)

    def fail(quantizer, batches):
        raise RuntimeError("shape mismatch inside the technique")

    ptq.techniques[-1].apply = fail
    with pytest.raises(SlimkitError, match=r"technique 'failing' failed \(RuntimeError: shape mismatch") as caught:
        ptq.calibrate(batches)
    assert "could not run through the model" not in str(caught.value)
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
