"""AIMET (``aimet-torch``) beside slimkit's PTQ techniques on EfficientNet-Lite0, per-tensor W8A8.

AIMET is a peer, never a slimkit dependency, and it cannot be installed beside torch 2.13.0+cpu as it declares
itself: ``aimet-torch`` 2.42.0 is a pure-Python wheel that imports torchvision at module level
(``aimet_torch/utils.py``: ``from torchvision import datasets, transforms``), and the only torchvision for torch 2.13
on PyPI (0.28.0) is a CUDA build whose ``_C.so`` links ``libtorch_cuda.so`` / ``libc10_cuda.so``, absent from the CPU
torch ("RuntimeError: operator torchvision::nms does not exist" on ``import torchvision``). This script therefore runs
in a throwaway venv (never ``.venv``) that sees ``.venv``'s packages, has ``aimet-torch`` installed with
``--no-deps`` plus its pure-Python requirements, and a stub ``torchvision`` package (empty ``datasets``, a
``transforms.Resize`` class and ``ops`` functions that raise) on ``PYTHONPATH``: nothing AIMET runs below calls
torchvision. ``aimet-torch`` 2.42 has no bias correction (``aimet_torch.bias_correction`` is gone from the 2.x
package), so its rows are BatchNorm folding, cross-layer equalization (``equalize_model``: BN fold, CLE, high-bias
fold) and AdaRound.

Same model, images and metrics as ``bench_ptq_techniques.py`` (32 calibration crops, 128 evaluation crops; top-1
agreement and logit SQNR against the float model). AIMET's default config: per-tensor symmetric int8 weights,
asymmetric int8 activations at every op output, min-max ranges (``QuantScheme.post_training_tf``).

AdaRound rows (150 iterations per layer, as slimkit's rows) only with ``--adaround``. Run (see RESULTS_ptq.md for
the venv recipe):
``PYTHONPATH=$PWD:/tmp/tvstub /tmp/aimet_venv/bin/python benchmarks/bench_ptq_aimet.py``
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_ptq_techniques import ADAROUND, BATCH, CALIBRATION, EVALUATION, predict, top1  # noqa: E402
from ptq_images import normalize, sample_crops  # noqa: E402

from slimkit.models.efficientnet_lite import IMAGE_MEAN, IMAGE_STD, load_pretrained_efficientnet_lite0  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
SHAPE = (1, 3, 224, 224)


def quantsim_row(model: torch.nn.Module, calibration: list, evaluation: list, reference: torch.Tensor,
                 encodings: str | None = None) -> dict:
    """AIMET QuantizationSimModel (default config, min-max) on ``model``; AdaRound's frozen weight encodings when
    given."""
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.quantsim import QuantizationSimModel

    sim = QuantizationSimModel(model, dummy_input=torch.zeros(SHAPE), quant_scheme=QuantScheme.post_training_tf,
                               default_output_bw=8, default_param_bw=8)
    if encodings:
        sim.set_and_freeze_param_encodings(encodings)
    with torch.no_grad():
        sim.compute_encodings(lambda m, _: [m(batch) for batch in calibration], None)
    return top1(reference, predict(sim.model, evaluation))


def main() -> None:
    import aimet_torch
    from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.cross_layer_equalization import equalize_model

    model = load_pretrained_efficientnet_lite0()
    images = normalize(sample_crops(CALIBRATION + EVALUATION, seed=0), IMAGE_MEAN, IMAGE_STD)
    calibration = list(images[:CALIBRATION].split(BATCH))
    evaluation = list(images[CALIBRATION:].split(BATCH))
    reference = predict(model, evaluation)
    print(f"aimet-torch {getattr(aimet_torch, '__version__', '2.42.0')}, torch {torch.__version__}, "
          f"load {os.getloadavg()[0]:.1f}\n")
    print("| AIMET, per-tensor W8A8 | agreement % | SQNR dB | technique seconds: wall (CPU) |\n|---|---|---|---|")

    def prepare(name: str, step) -> tuple[torch.nn.Module, str]:
        work = copy.deepcopy(model).eval()
        wall, cpu = time.perf_counter(), time.process_time()
        step(work)
        return work, f"{name} {time.perf_counter() - wall:.1f} ({time.process_time() - cpu:.1f})"

    def adaround(work: torch.nn.Module) -> tuple[torch.nn.Module, str, str]:
        directory = tempfile.mkdtemp()
        params = AdaroundParameters(data_loader=calibration, num_batches=len(calibration),
                                    default_num_iterations=ADAROUND["iterations"])
        wall, cpu = time.perf_counter(), time.process_time()
        rounded = Adaround.apply_adaround(work, torch.zeros(SHAPE), params, path=directory, filename_prefix="ada",
                                          default_param_bw=8, default_quant_scheme=QuantScheme.post_training_tf)
        return rounded, os.path.join(directory, "ada.encodings"), \
            f"adaround {time.perf_counter() - wall:.1f} ({time.process_time() - cpu:.1f})"

    rows = {"BatchNorm folded (naive)": lambda m: fold_all_batch_norms(m, SHAPE),
            "equalize_model (BN fold + CLE + high-bias fold)": lambda m: equalize_model(m, SHAPE)}
    for label, step in rows.items():
        work, seconds = prepare(label.split(" ")[0], step)
        row = quantsim_row(work, calibration, evaluation, reference)
        print(f"| {label} | {row['agreement']:.2f} | {row['sqnr_db']:.2f} | {seconds} |", flush=True)
        if "--adaround" not in sys.argv:
            continue
        try:
            rounded, encodings, ada_seconds = adaround(work)
            row = quantsim_row(rounded, calibration, evaluation, reference, encodings)
            print(f"| {label} + AdaRound ({ADAROUND['iterations']} iterations) | {row['agreement']:.2f} | "
                  f"{row['sqnr_db']:.2f} | {seconds}, {ada_seconds} |", flush=True)
        except Exception as error:  # a peer's failure is a figure
            print(f"| {label} + AdaRound | failed: {type(error).__name__}: {str(error)[:200]} | | |", flush=True)


if __name__ == "__main__":
    main()
