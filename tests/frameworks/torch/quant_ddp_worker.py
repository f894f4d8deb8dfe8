"""Per-rank program of the distributed quantization test (imported by spawned processes by module name)."""

from __future__ import annotations

import os

import torch

from slimkit.algorithms.quantization import PostTrainingQuantizer, QATQuantizer
from slimkit.frameworks.torch import distributed
from slimkit.models import DigitsCNN

CONFIG = [{"quant_types": ["weight", "output"], "op_types": ["default"]}]  # whole graph: every tensor observed
ALGORITHMS = ("minmax", "l2", "kl")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return DigitsCNN(width=8)


def ptq_calibration(algorithm: str, batches: list, path: str | None = None) -> dict:
    """Calibrate a PTQ-quantized DigitsCNN on ``batches``; export to ``path`` (main process writes)."""
    model = _model().eval()
    ptq = PostTrainingQuantizer(model, CONFIG, algorithm=algorithm, dummy_input=torch.rand(1, 1, 8, 8),
                                progress=False)
    ptq.compress()
    ptq.calibrate(batches)
    if path is None:
        return ptq.calibration()
    return ptq.export_model(model_path=path + ".pth", calibration_path=path + ".json")


def qat_calibration(batches: list) -> dict:
    """QAT forward passes in training mode (BatchNorm on its running statistics, so a rank's activations are
    exactly its rows of the global batch's); the EMA ranges are updated every pass."""
    model = _model()
    qat = QATQuantizer(model, CONFIG, dummy_input=torch.rand(1, 1, 8, 8))
    model = qat.compress().train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    with torch.no_grad():
        for x in batches:
            model(x)
    return qat.calibration()


def worker(rank: int, world_size: int, port: int, batches: list, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world_size)
    try:
        shard = [x[rank * len(x) // world_size:(rank + 1) * len(x) // world_size] for x in batches]
        result = {alg: ptq_calibration(alg, shard, os.path.join(out_dir, f"ptq_{alg}_rank{rank}"))
                  for alg in ALGORITHMS}
        result["qat"] = qat_calibration(shard)
        lo, hi = distributed.all_reduce_range(torch.tensor([-1.0 - rank, 2.0]).numpy(),
                                              torch.tensor([3.0 + rank]).numpy())
        result["helpers"] = {"min": distributed.all_reduce_min(float(rank)), "max": distributed.all_reduce_max(rank),
                             "range": (lo.tolist(), hi.tolist())}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pth"))
        torch.distributed.barrier()  # no rank tears gloo down while its peer still uses it
    finally:
        torch.distributed.destroy_process_group()
