"""Native runtimes' start-up and progress lines are held back; everything else on stderr still shows."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from slimkit.utils.stderr import TENSORFLOW_NOISE, without_lines

ROOT = Path(__file__).parents[2]


def test_without_lines_drops_only_the_matching_lines(capfd):
    with without_lines(*TENSORFLOW_NOISE, rb"XNNPACK delegate"):
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
                    b"fully_quantize: 0, inference_type: 6, input_inference_type: INT8, output_inference_type: INT8\n"
                    b"ERROR: a real problem\n"
                    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        print("stdout is not touched")
    captured = capfd.readouterr()
    assert captured.err == "ERROR: a real problem\n"
    assert captured.out == "stdout is not touched\n"


def test_keras_and_litert_runs_print_nothing_to_stderr(tmp_path):
    """A fresh process (the lines come once per process): import, int8 export through TensorFlow's converter,
    the converter's float file and both run in LiteRT; stderr stays empty."""
    script = textwrap.dedent("""
        import numpy as np, torch
        from slimkit.frameworks.tensorflow import export_tflite, run_tflite
        from slimkit.converter import TFLiteConverter
        from slimkit.converter.verify import run_tflite as run_file
        import keras
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
        export_tflite(model, 'k.tflite', representative_data=x)
        assert run_tflite('k.tflite', x).shape == (16, 3)
        TFLiteConverter(torch.nn.Linear(4, 3).eval(), torch.randn(1, 4), 't.tflite').convert()
        assert run_file('t.tflite', [x[:1]])[0].shape == (1, 3)
        print('done')
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n" and result.stderr == ""
