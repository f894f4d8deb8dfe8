"""The real all-MiniLM-L6-v2 sentence encoder through slimkit -> benchmarks/results/minilm.json and
benchmarks/RESULTS_minilm.md.

Run: ``python benchmarks/bench_minilm.py`` (a few minutes on two CPU cores).

Sentences: first lines of standard-library docstrings (``tests/realmodels/minilm.py: corpus``), tokenized with
the model's own tokenizer to 32 tokens; 64 calibrate, the next 128 are evaluated. For each variant: the mean
cosine of its embeddings to float PyTorch's, and nearest-neighbour agreement (the share of sentences whose
nearest other sentence is the same as under float PyTorch). Variants: the float TFLite file; torch.ao dynamic
int8 (Linear); slimkit PTQ minmax on Linear layers (plain, and with the 'smooth' technique at alpha 0.5 and 0.7)
and on the whole graph, as the fake-quant model and as the int8 TFLite file (LiteRT), the file against the
quantized model's integer emulation on the first evaluation batch; plus conversion times.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine_info import describe_machine  # noqa: E402

from slimkit.algorithms.quantization import PostTrainingQuantizer  # noqa: E402
from slimkit.algorithms.quantization.techniques import Smooth  # noqa: E402
from slimkit.converter import TFLiteConverter  # noqa: E402
from slimkit.converter.verify import run_tflite  # noqa: E402
from tests.realmodels.minilm import corpus, load_encoder, token_ids  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(2)
BATCH, CALIBRATE, EVALUATE = 16, 64, 128
LINEAR = [{"quant_types": ["input", "weight", "output"], "op_types": ["Linear"]}]
# name -> (config_list, techniques)
CONFIGS = {"linear": (LINEAR, ()),
           "linear_smooth": (LINEAR, ("smooth",)),
           "linear_smooth_alpha07": (LINEAR, (Smooth(alpha=0.7),)),
           "whole_graph": ([{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}], ())}


def batches(texts: list[str]) -> list[torch.Tensor]:
    return [token_ids(texts[i:i + BATCH]) for i in range(0, len(texts), BATCH)]


def embed(model, data) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(ids) for ids in data]).numpy()


def real_minilm(calibrate: int, evaluate: int) -> tuple:
    """The real MiniLM encoder, the corpus, its first ``calibrate`` sentences as calibration batches, the next
    ``evaluate`` as evaluation batches, and the float model's embeddings of those."""
    model, texts = load_encoder(), corpus()
    calibration = batches(texts[:calibrate])
    evaluation = batches(texts[calibrate:calibrate + evaluate])
    return model, texts, calibration, evaluation, embed(model, evaluation)


def embed_file(path, data) -> np.ndarray:
    return np.concatenate([run_tflite(path, [ids.numpy()], num_threads=2)[0] for ids in data])


def scores(got: np.ndarray, reference: np.ndarray) -> dict:
    unit = got / np.linalg.norm(got, axis=1, keepdims=True)
    cosine = float((unit * reference).sum(1).mean())

    def neighbours(e):
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)

    agreement = float((neighbours(unit) == neighbours(reference)).mean())
    return {"mean_cosine": round(cosine, 4), "nn_agreement": round(agreement, 4)}


def convert(model, example, path) -> float:
    start = time.perf_counter()
    TFLiteConverter(model, example, path).convert()
    return round(time.perf_counter() - start, 2)


def main() -> None:
    reference_model, _, calibration, evaluation, reference = real_minilm(CALIBRATE, EVALUATE)
    out: dict = {"machine": describe_machine(torch=torch.__version__, threads=torch.get_num_threads()),
                 "sentences": {"calibration": CALIBRATE, "evaluation": EVALUATE, "tokens": 32, "batch": BATCH}}
    work = Path(tempfile.mkdtemp())
    path = work / "float.tflite"
    out["float_file"] = {"convert_s": convert(reference_model, evaluation[0], path),
                         **scores(embed_file(path, evaluation), reference),
                         "max_abs_vs_pytorch": float(np.abs(embed_file(path, evaluation) - reference).max())}
    dynamic = torch.ao.quantization.quantize_dynamic(load_encoder(), {torch.nn.Linear}, dtype=torch.qint8)
    out["torch_ao_dynamic_int8"] = scores(embed(dynamic, evaluation), reference)
    only = set(sys.argv[1:])  # optional: the variants to run
    for name, (config, techniques) in CONFIGS.items():
        if only and name not in only:
            continue
        model = load_encoder()
        start = time.perf_counter()
        ptq = PostTrainingQuantizer(model, config, algorithm="minmax", dummy_input=calibration[0],
                                    techniques=techniques, progress=False)
        ptq.compress()
        ptq.calibrate(calibration)
        model.eval()
        calibrate_s = round(time.perf_counter() - start, 2)
        path = work / f"{name}.tflite"
        convert_s = convert(model, evaluation[0], path)
        fake = embed(model, evaluation)
        in_file = embed_file(path, evaluation)
        with ptq.emulate_integer():
            emulated = embed(model, evaluation[:1])
        out[f"ptq_minmax_{name}"] = {
            "calibrate_s": calibrate_s, "convert_s": convert_s,
            "fake_quant": scores(fake, reference), "int8_file": scores(in_file, reference),
            "file_vs_fake_quant_max_abs": float(np.abs(in_file - fake).max()),
            "file_vs_emulation_max_abs": float(np.abs(in_file[:BATCH] - emulated).max()),
            "techniques": [{"technique": r.technique, "applied": len(r.applied), "skipped": len(r.skipped),
                            "seconds": round(r.seconds, 2), "explicit_inputs": len(r.details["explicit_inputs"]),
                            "explicit_outputs": len(r.details["explicit_outputs"])} for r in ptq.technique_reports]}
        print(name, out[f"ptq_minmax_{name}"], flush=True)
    results = ROOT / "benchmarks" / "results" / "minilm.json"
    if only and results.exists():  # a partial run updates its variants only
        out = {**json.loads(results.read_text()), **out}
    results.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
