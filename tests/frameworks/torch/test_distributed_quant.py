"""Quantization statistics under torch.distributed: 2 CPU processes (gloo), each calibrating on half of every
global batch, hold the same calibration as each other and as one process calibrating on the global batches."""

from __future__ import annotations

import torch
import torch.multiprocessing as mp

from tests.frameworks.torch import quant_ddp_worker


def test_two_ranks_calibrate_like_one_process_on_the_global_batches(tmp_path, free_port):
    torch.manual_seed(3)
    batches = [torch.rand(32, 1, 8, 8) for _ in range(3)]
    batches[1][16:] *= 3.0  # the halves differ: rank 1 alone would see other ranges than rank 0
    mp.spawn(quant_ddp_worker.worker, args=(2, free_port, batches, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pth", weights_only=True) for r in range(2)]
    assert ranks[0]["helpers"] == ranks[1]["helpers"] == {"min": 0.0, "max": 1, "range": ([-2.0, 2.0], [4.0])}
    for algorithm in quant_ddp_worker.ALGORITHMS:
        reference = quant_ddp_worker.ptq_calibration(algorithm, batches)
        assert ranks[0][algorithm] == ranks[1][algorithm], algorithm            # identical on both ranks
        assert ranks[0][algorithm] == reference, algorithm                      # exactly the global calibration
        if algorithm != "l2":  # the test has teeth: one shard alone calibrates differently
            assert quant_ddp_worker.ptq_calibration(algorithm, [x[:16] for x in batches]) != reference, algorithm
    # QAT EMA: each step's batch min / max is reduced before the EMA update, so the EMA is the one a single
    # process computes on the global batches (given the same per-sample activations)
    reference = quant_ddp_worker.qat_calibration(batches)
    assert ranks[0]["qat"] == ranks[1]["qat"] == reference
    # only the main process wrote files (each rank was given its own paths)
    written = [f"ptq_{a}_rank0{ext}" for a in quant_ddp_worker.ALGORITHMS for ext in (".pth", ".json")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*written, "rank0.pth", "rank1.pth"])
