"""The quantization snippet of API.md, as a user writes it."""

import torch

from slimkit.algorithms.quantization import PostTrainingQuantizer, QATQuantizer
from slimkit.models import DigitsCNN


def test_api_snippet(tmp_path):
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    x = torch.rand(2, 1, 8, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    config_list = [{'quant_types': ['weight', 'output'], 'quant_bits': {'weight': 8, 'output': 8},
                    'op_types': ['Conv2d', 'Linear']}]
    quantizer = QATQuantizer(model, config_list, optimizer=optimizer, dummy_input=x)
    model = quantizer.compress()
    data = torch.utils.data.TensorDataset(torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    for inputs, targets in loader:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    assert quantizer.steps == 4
    calibration = quantizer.export_model(model_path=tmp_path / 'qat.pth', calibration_path=tmp_path / 'calib.pth')
    for name in ('conv1', 'conv2', 'conv3', 'fc'):
        entry = calibration[name]
        assert {'weight_bits', 'weight_scale', 'weight_zero_point', 'output_bits', 'output_scale',
                'output_zero_point'} <= set(entry)
        assert len(entry['weight_scale']) == quantizer.layer(name).module.weight.shape[0]
    DigitsCNN(width=8).load_state_dict(torch.load(tmp_path / 'qat.pth', weights_only=True))

    model = quantizer.unwrap_model().eval()
    ptq = PostTrainingQuantizer(model, config_list, algorithm='kl', dummy_input=x, progress=False)
    ptq.compress()
    ptq.calibrate(loader)
    assert ptq.calibration()['fc']['output_scale'] > 0
