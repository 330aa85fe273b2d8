"""The safe JSON reader (mnist_zoo/schema.py) and the readers built on it: size and nesting capped before
parsing, every type checked against a schema, each fault one line naming the file and the field."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest

from mnist_zoo import recipes
from mnist_zoo.cli import main
from mnist_zoo.recipes import Recipe, recipe_for
from mnist_zoo.schema import MAX_CONTAINERS, nesting_depth, read_json, schema_of
from mnist_zoo.util import UserError


def _recipe_doc(**changes) -> dict:
    recipe = {**asdict(replace(recipe_for("mlp"), epochs=1)), **changes}
    return {"schema": recipes.RECIPE_SCHEMA, "model": "mlp", "recipe": recipe}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_size": 1.5}, "recipe.batch_size must be integer, got 1.5"),
        (
            {"batch_size": 128.0},
            "recipe.batch_size must be integer, got 128.0",
        ),  # a float slice fails mid-run
        ({"epochs": "1.5x"}, "recipe.epochs must be number, got '1.5x'"),  # epochs may be fractional
        ({"epochs": True}, "recipe.epochs must be number, got True"),
        ({"name": {"a": 1}}, "recipe.name must be string, got {'a': 1}"),
        ({"lr": None}, "recipe.lr must be number, got None"),
        ({"augment": 1}, "recipe.augment must be boolean, got 1"),
        ({"colour": "red"}, "recipe has unknown field(s) colour"),
    ],
)
def test_a_recipe_file_of_wrong_types_is_one_line_before_any_training(tmp_path, capsys, changes, message):
    path = tmp_path / "best.json"
    path.write_text(json.dumps(_recipe_doc(**changes)))
    checkpoint = tmp_path / "mlp.pt"
    assert main(["train", "mlp", "--recipe-file", str(path), "--checkpoint", str(checkpoint)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: --recipe-file {path}: {message}\n"
    assert not checkpoint.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["best.json"]


def test_a_written_recipe_file_reads_back(tmp_path):
    recipe = replace(recipe_for("cnn"), name="sweep", lr=0.2)
    path = recipes.write_recipe_file(tmp_path / "best.json", "cnn", recipe, {"grid": {"lr": [0.2]}})
    assert recipes.read_recipe_file(path, "cnn") == recipe


def test_the_recipe_schema_follows_the_dataclass():
    schema = schema_of(Recipe)
    assert schema["properties"]["batch_size"] == {"type": "integer"}
    assert schema["properties"]["lr"] == {"type": "number"}
    assert set(schema["properties"]) == set(asdict(recipe_for("mlp")))
    assert set(schema["required"]) == {"name", "epochs", "batch_size", "lr"}  # the settings without a default


def test_a_recipe_file_from_before_a_setting_existed_reads_with_its_default(tmp_path):
    path = recipes.write_recipe_file(tmp_path / "old.json", "mlp", recipe_for("mlp"), {})
    doc = json.loads(path.read_text())
    del doc["recipe"]["precision"], doc["recipe"]["beta1"]
    path.write_text(json.dumps(doc))
    assert recipes.read_recipe_file(path, "mlp") == recipe_for("mlp")


def test_size_and_nesting_are_capped_before_parsing(tmp_path):
    big = tmp_path / "big.json"
    big.write_text("[" + "0," * 600 + "0]")
    with pytest.raises(UserError, match=r"^big.json: larger than 1,000 bytes"):
        read_json(big, what="big.json", max_bytes=1000)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)  # Python's parser would raise RecursionError
    with pytest.raises(UserError, match=r"^deep.json: nested 100000 levels deep, more than 64$"):
        read_json(deep, what="deep.json")
    assert nesting_depth(b'{"a": ["[[[[\\"{{"], "b": {}}') == 2  # brackets inside strings do not count
    deep.write_text("[" + ",".join(["{}"] * (MAX_CONTAINERS + 1)) + "]")  # parsed, ~200 bytes each
    with pytest.raises(UserError, match=r"^deep.json: 1,000,002 arrays and objects, more than 1,000,000$"):
        read_json(deep, what="deep.json")
    for text, reason in [("", "not JSON"), ("1" * 5000, "not JSON"), ('{"a": 1', "not JSON")]:
        deep.write_text(text)
        with pytest.raises(UserError, match=reason):
            read_json(deep)
    with pytest.raises(UserError, match="No such file"):
        read_json(tmp_path / "absent.json")


def test_strings_and_values_are_counted_before_parsing(tmp_path):
    many = tmp_path / "many.json"
    many.write_text(
        "[" + ",".join(['"a"'] * 250_001) + "]"
    )  # 1 MB, 13 MB parsed; 3 million took 1 GB to count
    with pytest.raises(UserError, match=r"^many.json: more than 250,000 strings, not a file of ours$"):
        read_json(many, what="many.json")
    many.write_text("[" + ",".join(["0.5"] * 5000) + "]")
    with pytest.raises(UserError, match=r"^many.json: about 5,000 values, more than 4,999$"):
        read_json(many, what="many.json", max_values=4999)
    assert len(read_json(many, what="many.json", max_values=5000)) == 5000


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"a": [1, {"p50_s": NaN}]}', "a[1].p50_s is NaN"),
        ('{"recipe": {"lr": Infinity}}', "recipe.lr is Infinity"),
        ("-Infinity", "the document is -Infinity"),
        ('[0.5, {"x": 1e999}]', "[1].x is 1e999"),  # past a float's range: Python makes it inf
        ('{"a": [[], {"b": -1E+400}], "c": NaN}', "a[1].b is -1E+400"),  # the first in the file
        ("[" + "9" * 400 + ".5]", "[0] is 999999999999999999999..., not"),
        ('{"a\\nb": {"c": NaN}}', "'a\\nb'.c is NaN"),  # a newline in a key stays out of the line
    ],
)
def test_nan_and_infinity_are_refused_naming_the_field(tmp_path, text, message):
    """Python's json reads NaN, Infinity and -Infinity (JSON has none), and a schema's "number" takes them."""
    path = tmp_path / "odd.json"
    path.write_text(text)
    with pytest.raises(UserError) as refused:
        read_json(path, what="odd.json")
    assert str(refused.value).startswith(f"odd.json: {message}"), refused.value
    assert str(refused.value).endswith("not a finite number (JSON has no NaN or Infinity)")


def test_nan_in_strings_and_finite_extremes_are_kept(tmp_path):
    path = tmp_path / "fine.json"
    path.write_text('{"NaN": "Infinity", "big": 1.7e308, "small": 1e-400, "int": ' + "9" * 400 + "}")
    assert read_json(path) == {"NaN": "Infinity", "big": 1.7e308, "small": 0.0, "int": int("9" * 400)}


def test_a_recipe_file_with_an_infinite_lr_is_one_line(tmp_path, capsys):
    path = tmp_path / "best.json"
    path.write_text(json.dumps(_recipe_doc(lr=float("inf"))))  # json.dumps writes Infinity
    assert main(["train", "mlp", "--recipe-file", str(path), "--checkpoint", str(tmp_path / "mlp.pt")]) == 1
    assert capsys.readouterr().err == (
        f"error: --recipe-file {path}: recipe.lr is Infinity, not a finite number (JSON has no NaN or Infinity)\n"
    )
