"""Whole-graph quantization of Keras models (op_types ['default']): plan, shared ranges, int8 TFLite parity."""

import keras
import numpy as np
import pytest

from slimkit.algorithms.quantization import PostTrainingQuantizer, QATQuantizer
from slimkit.errors import UnsupportedModelError
from slimkit.frameworks.tensorflow import export_tflite
from slimkit.frameworks.tensorflow.export import run_tflite
from slimkit.frameworks.tensorflow.wrapper import wrapper_of

CONFIG = [{'quant_types': ['weight', 'output'], 'op_types': ['default']}]


def residual_model():
    keras.utils.set_random_seed(3)
    L = keras.layers
    x = keras.Input((8, 8, 3), name='x')
    c1 = L.ReLU(name='r1')(L.BatchNormalization(name='bn1')(L.Conv2D(8, 3, padding='same', name='c1')(x)))
    c2 = L.Conv2D(8, 3, padding='same', name='c2')(c1)
    added = L.ReLU(name='r2')(L.Add(name='add')([c1, c2]))
    pooled = L.MaxPooling2D(name='pool')(added)
    branch = L.Conv2D(4, 2, strides=2, name='c3')(c1)
    cat = L.Concatenate(name='cat')([pooled, branch])
    avg = L.GlobalAveragePooling2D(name='gap')(cat)
    return keras.Model(x, L.Dense(5, name='fc')(avg))


def data(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 8, 8, 3)).astype(np.float32)


def calibrated():
    model = residual_model()
    ptq = PostTrainingQuantizer(model, CONFIG, dummy_input=data(1))
    ptq.compress()
    ptq.calibrate([data(16, seed=1)])
    return model, ptq


def test_plan_names_the_functional_tensors_and_their_producers():
    model = residual_model()
    ptq = PostTrainingQuantizer(model, CONFIG, dummy_input=data(1))
    plan = ptq.graph_plan
    assert {key: tensor.kind for key, tensor in plan.graph.items()} == {
        'input/0': 'input', 'r2': 'relu', 'pool': 'max_pool', 'cat': 'cat', 'gap': 'mean'}
    assert plan.fused == {'add'}  # add + ReLU: one kernel, quantized after the ReLU
    assert plan.graph['pool'].inputs == ['graph:r2']
    assert plan.graph['cat'].inputs == ['graph:pool', 'layer:c3']
    # written straight onto the concatenation's grid (through the max-pool, which shares its input's)
    assert plan.concat_inputs == {'graph:pool': 'cat', 'graph:r2': 'cat', 'layer:c3': 'cat'}
    assert plan.input_keys == {'c1': {0: 'input/0'}}
    assert plan.folds['c1'].tail is model.get_layer('r1')


def test_shared_ranges_follow_the_profile():
    model, ptq = calibrated()
    params = ptq.graph_params
    assert ptq.graph_meta['pool']['shared_from'] == 'graph:r2'  # max-pool: its input's parameters
    assert ptq.graph_meta['cat']['shared_from'] == 'inputs'     # concatenation: the union of its inputs' ranges
    (r2_lo, r2_hi), (c3_lo, c3_hi) = ptq.graph_observers['r2'].range(), ptq.states['c3'].observers['output'].range()
    union = ptq.range_params(np.minimum(r2_lo, c3_lo), np.maximum(r2_hi, c3_hi), 8)
    cat = params['cat']
    assert (cat.scale.tolist(), cat.zero_point.tolist()) == (union.scale.tolist(), union.zero_point.tolist())
    # the tensors written only for the concatenation are on its grid: no requantization in front of it
    assert params['r2'] is cat and params['pool'] is cat and ptq.params['c3']['output'] is cat
    assert sorted(params) == ['cat', 'gap', 'input/0', 'pool', 'r2']  # the add is fused with its ReLU
    assert wrapper_of(model.get_layer('gap')) is not None and wrapper_of(model.get_layer('add')) is None


@pytest.mark.parametrize('resolver', ['AUTO', 'BUILTIN_WITHOUT_DEFAULT_DELEGATES'])
def test_int8_tflite_within_one_step_of_the_fake_quant_model(tmp_path, resolver):
    """LiteRT's default (XNNPACK) and its builtin kernels against the Keras fake-quant model on 32 inputs."""
    from ai_edge_litert.interpreter import OpResolverType

    model, ptq = calibrated()
    path = tmp_path / 'model.tflite'
    export_tflite(model, path, quantizer=ptq, representative_data=data(4, seed=1))
    x = data(32, seed=7)
    expected = np.asarray(model(x, training=False))
    got = run_tflite(path, x, experimental_op_resolver_type=getattr(OpResolverType, resolver))
    steps = np.abs(got - expected) / float(ptq.params['fc']['output'].scale[0])
    exact = float(np.mean(steps < 1e-3))
    print(f"whole-graph Keras int8 ({resolver}) vs fake-quant: max {steps.max():.3f} steps, {exact:.1%} exact")
    assert steps.max() <= 1.0 + 1e-3
    assert exact >= (0.95 if resolver == 'AUTO' else 0.5)  # measured: 100 % (XNNPACK), 72 % (builtin MEAN rounding)


def test_qat_observes_graph_tensors_in_fit_exports_and_unwrap_restores(tmp_path):
    model = residual_model()
    x, y = data(32, seed=1), np.zeros((32, 5), np.float32)
    before = np.asarray(model(x))
    qat = QATQuantizer(model, CONFIG, dummy_input=data(1))
    qat.compress()
    assert model.get_layer('gap').supports_jit is False  # the core's observers run through tf.py_function
    model.compile(optimizer='sgd', loss='mse')
    weights = [w.numpy() for w in model.weights]
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert sorted(qat.graph_observers) == ['gap', 'input/0', 'r2'] and 'cat' in qat.graph_params  # cat: a rule
    assert all(observer.ready for observer in qat.graph_observers.values())
    export_tflite(model, tmp_path / 'qat.tflite', quantizer=qat)
    qat.freeze()
    test = data(32, seed=7)
    steps = np.abs(run_tflite(tmp_path / 'qat.tflite', test) - np.asarray(model(test, training=False))) \
        / float(qat.params['fc']['output'].scale[0])
    assert steps.max() <= 1.0 + 1e-3 and np.mean(steps < 1e-3) >= 0.95  # measured: 1 step at most, 99.4 % exact
    for w, value in zip(model.weights, weights):
        w.assign(value)
    qat.unwrap_model()
    assert all(wrapper_of(layer) is None for layer in model.layers) and 'training' not in vars(model)
    np.testing.assert_array_equal(np.asarray(model(x)), before)


def test_sequential_models_plan_and_subclassed_models_are_refused_by_name():
    L = keras.layers
    sequential = keras.Sequential([keras.Input((6, 6, 1)), L.Conv2D(2, 3, name='c'), L.MaxPooling2D(name='p'),
                                   L.Flatten(name='f'), L.Dense(3, name='fc')])
    ptq = PostTrainingQuantizer(sequential, CONFIG, dummy_input=np.zeros((1, 6, 6, 1), np.float32))
    assert {key: tensor.inputs for key, tensor in ptq.graph_plan.graph.items()} == {
        'input/0': [], 'p': ['layer:c'], 'f': ['graph:p']}
    assert ptq.graph_plan.input_keys == {'c': {0: 'input/0'}}

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = L.Conv2D(2, 3, name='c')

        def call(self, x):
            return self.conv(x)

    model = Sub()
    model(np.zeros((1, 6, 6, 1), np.float32))
    with pytest.raises(UnsupportedModelError, match="subclassed model 'Sub'.*Expected a functional or Sequential"):
        PostTrainingQuantizer(model, CONFIG, dummy_input=np.zeros((1, 6, 6, 1), np.float32))
    assert wrapper_of(model.conv) is None
