"""CLI errors: YAML problems name the file, line and key; missing objects and components say what to do."""

from __future__ import annotations

import textwrap

from slimkit.cli import main

MODEL = "tests.cli.factories:digits_model"


def run_error(tmp_path, capsys, text, *extra):
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(text))
    status = main(["prune", "--config", str(path), "--model", MODEL, "--out", str(tmp_path / "out"), *extra])
    assert status == 2
    error = capsys.readouterr().err
    assert error.startswith(f"slimkit prune: error: {path}:")
    return error.removeprefix(f"slimkit prune: error: {path}:").strip()


def test_config_list_value_error_names_line_and_key(tmp_path, capsys):
    message = run_error(tmp_path, capsys, """\
        algorithm: L1FilterPruner
        config_list:
          - sparsity: 0.5
            op_types: [Conv2d]
          - op_names: [fc]
            sparsity: 1.5
        """)
    assert message.startswith("6: key 'sparsity' (at config_list[1].sparsity): L1FilterPruner: "
                              "config_list[1]['sparsity'] is invalid. Expected a number in [0, 1). "
                              "Received: sparsity=1.5")


def test_unknown_config_list_key_names_its_line(tmp_path, capsys):
    message = run_error(tmp_path, capsys, """\
        algorithm: LevelPruner
        config_list:
          - op_types: [Conv2d]
            sparsty: 0.5
        """)
    assert message.startswith("4: key 'sparsty' (at config_list[0].sparsty): LevelPruner: config_list[0] has "
                              "unknown key 'sparsty'. Did you mean 'sparsity'?")


def test_op_name_matching_no_layer_names_its_line(tmp_path, capsys):
    message = run_error(tmp_path, capsys, """\
        algorithm: LevelPruner
        config_list:
          - sparsity: 0.5
            op_types: [Conv2d]

          - sparsity: 0.5
            op_names: [conv9]
        """)
    assert message.startswith("7: key 'op_names' (at config_list[1].op_names): LevelPruner: config_list[1]"
                              "['op_names'] names a layer the model does not have.")


def test_missing_required_key_names_the_entry(tmp_path, capsys):
    message = run_error(tmp_path, capsys, """\
        algorithm: LevelPruner
        config_list:
          - op_types: [Conv2d]
        """)
    assert message.startswith("3: config_list[0]: LevelPruner: config_list[0] is missing required key 'sparsity'")


def test_unknown_top_level_key(tmp_path, capsys):
    message = run_error(tmp_path, capsys, """\
        algoritm: LevelPruner
        config_list: [{sparsity: 0.5, op_types: [Conv2d]}]
        """)
    assert message.startswith("1: key 'algoritm': unknown key. Did you mean 'algorithm'?")


def test_unknown_algorithm_lists_the_registry(tmp_path, capsys):
    message = run_error(tmp_path, capsys, """\

        algorithm: L1FilterPrunr
        config_list: [{sparsity: 0.5, op_types: [Conv2d]}]
        """)
    assert message.startswith("2: key 'algorithm': unknown pruner. Did you mean 'L1FilterPruner'? Expected one of [")
    assert "'LevelPruner'" in message and "'FilterPruner'" not in message  # abstract bases are not offered


def test_nested_fine_tune_key(tmp_path, capsys):
    message = run_error(tmp_path, capsys, """\
        algorithm: LevelPruner
        config_list: [{sparsity: 0.5, op_types: [Conv2d]}]
        fine_tune:
          lr: 0.01
          epochs: -1
        """, "--data", "tests.cli.factories:digits_data")
    assert message == "5: key 'epochs' (at fine_tune.epochs): Expected an integer >= 0. Received: epochs=-1"


def test_bad_argument_names_arguments_key(tmp_path, capsys):
    message = run_error(tmp_path, capsys, """\
        algorithm: LevelPruner
        arguments:
          no_such_option: 1
        config_list: [{sparsity: 0.5, op_types: [Conv2d]}]
        """)
    assert message.startswith("2: key 'arguments': LevelPruner does not accept these arguments:")


def test_invalid_yaml_and_duplicate_keys(tmp_path, capsys):
    assert run_error(tmp_path, capsys, "algorithm: LevelPruner\nconfig_list: [\n  {sparsity: 0.5\n"
                     ).startswith("4: invalid YAML:")
    assert run_error(tmp_path, capsys, "algorithm: A\nconfig_list: []\nalgorithm: B\n") == (
        "3: key 'algorithm' appears twice in the same mapping (first on line 1). Expected each key once.")


def test_missing_factory_and_bad_spec(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text("algorithm: LevelPruner\nconfig_list: [{sparsity: 0.5, op_types: [Conv2d]}]\n")
    for model, expected in [
        ("tests.cli.factories:nope", "Module 'tests.cli.factories' has no attribute 'nope'"),
        ("no_such_pkg.models:build", "Could not import module 'no_such_pkg.models'"),
        ("tests.cli.factories", "Expected the model factory as 'package.module:name'. Received: 'tests.cli.factories'"),
        ("tests.cli.factories:NOT_CALLABLE", "Expected a callable model factory."),
    ]:
        assert main(["prune", "--config", str(path), "--model", model, "--out", str(tmp_path)]) == 2
        assert expected in capsys.readouterr().err


def test_an_input_shape_too_large_to_build_names_its_line(tmp_path, capsys):
    message = run_error(tmp_path, capsys, """\
        algorithm: LevelPruner
        config_list:
          - sparsity: 0.5
            op_types: [Conv2d]
        input_shape: [1, 1, 100000, 100000]
        """)
    assert message.startswith("5: key 'input_shape': Expected a list of positive integers such as [1, 1, 8, 8], at "
                              "most 268,435,456 elements in all. Received: input_shape=[1, 1, 100000, 100000]")
