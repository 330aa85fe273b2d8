"""Model plugins: entry points and module:callable specs join the zoo; a broken one is one line naming it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

from mnist_zoo import models
from mnist_zoo.recipes import GENERIC, recipe_for
from mnist_zoo.targets import TARGET_ACCURACY
from mnist_zoo.util import UserError

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = """
from torch import nn
from mnist_zoo.models import model_plugin
from mnist_zoo.recipes import Recipe


@model_plugin("tiny", "one small convolution", recipe=Recipe("mine", epochs=1, batch_size=256, lr=0.05),
              target=0.9)
def tiny():
    return nn.Sequential(nn.Conv2d(1, 4, 5), nn.MaxPool2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))


@model_plugin("plain", "softmax regression again")
def plain():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


@model_plugin("five", "five logits")
def five():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 5))


@model_plugin("lenet", "a second lenet")
def clash():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


def undeclared():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
"""


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A module `zoo_test_plugin` on the path, and the registry as it was afterwards."""
    (tmp_path / "zoo_test_plugin.py").write_text(PLUGIN)
    (tmp_path / "zoo_broken_plugin.py").write_text("import no_such_module_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(models.SPECS_ENV, raising=False)
    saved = dict(models._REGISTRY), dict(models._BROKEN), dict(models._SPECS), models._loaded
    yield tmp_path
    for live, old in zip((models._REGISTRY, models._BROKEN, models._SPECS), saved[:3], strict=True):
        live.clear()
        live.update(old)
    models._loaded = saved[3]
    sys.modules.pop("zoo_test_plugin", None)


def fake_entry_points(monkeypatch, *pairs: tuple[str, str]) -> None:
    eps = [EntryPoint(name, value, models.GROUP) for name, value in pairs]
    monkeypatch.setattr(models, "entry_points", lambda group: [e for e in eps if e.group == group])
    models._loaded = False


def test_a_spec_registers_its_declared_model_with_its_recipe(plugin_dir):
    info = models.model_info("zoo_test_plugin:tiny")
    assert (info.name, info.source, info.params) == ("tiny", "zoo_test_plugin:tiny", 4 * 25 + 4 + 1450)
    assert models.canonical("zoo_test_plugin:tiny") == "tiny" and "tiny" in models.list_models()
    assert models.get_model("tiny")(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert recipe_for("tiny").lr == 0.05 and recipe_for("tiny").name == "default"
    assert TARGET_ACCURACY["tiny"] == 0.9
    assert os.environ[models.SPECS_ENV] == "zoo_test_plugin:tiny"  # passed on to child processes


def test_without_a_recipe_the_generic_one_applies(plugin_dir):
    models.model_info("zoo_test_plugin:plain")
    assert recipe_for("plain") == GENERIC and recipe_for("plain", epochs=2).epochs == 2
    assert TARGET_ACCURACY["plain"] == models.GENERIC_TARGET


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "zoo_test_plugin:five",
            "model plugin 'five' (zoo_test_plugin:five): given float32 [2, 1, 28, 28] it returned float32 [2, 5], "
            "not float logits [2, 10]",
        ),
        (
            "zoo_test_plugin:clash",
            "model plugin 'lenet' (zoo_test_plugin:clash): the name 'lenet' is taken by the model from "
            "mnist_zoo.models",
        ),
        (
            "zoo_test_plugin:undeclared",
            "model plugin zoo_test_plugin:undeclared: not a builder declared with @mnist_zoo.models.model_plugin",
        ),
        (
            "zoo_test_plugin:missing",
            "model plugin zoo_test_plugin:missing: zoo_test_plugin has no attribute 'missing'",
        ),
        (
            "zoo_broken_plugin:x",
            "model plugin zoo_broken_plugin:x: cannot import zoo_broken_plugin: ModuleNotFoundError: No module named",
        ),
    ],
)
def test_a_broken_spec_is_one_line_naming_it(plugin_dir, spec, message):
    with pytest.raises(UserError, match="^" + re.escape(message)):
        models.model_info(spec)
    assert models.model_info("lenet").source == "mnist_zoo.models"  # the zoo is untouched


def test_entry_points_load_lazily_and_a_broken_one_only_warns(plugin_dir, monkeypatch):
    fake_entry_points(
        monkeypatch,
        ("tiny", "zoo_test_plugin:tiny"),
        ("broken", "zoo_broken_plugin:x"),
        ("five", "zoo_test_plugin:five"),
    )
    assert models.list_models() == ["mlp", "dnn", "lenet", "cnn", "tiny"]
    assert models.model_info("tiny").source == "entry point tiny = zoo_test_plugin:tiny"
    problems = models.plugin_problems()
    assert len(problems) == 2 and problems[0].startswith("model plugin broken (zoo_broken_plugin:x): ")
    with pytest.raises(UserError, match="^model plugin broken .*No module named 'no_such_module_here'"):
        models.model_info("broken")
    with pytest.raises(UserError, match="returned float32 \\[2, 5\\]"):
        models.get_model("five")


def test_an_entry_point_clashing_with_the_zoo_leaves_the_zoo_model_alone(plugin_dir, monkeypatch):
    fake_entry_points(monkeypatch, ("lenet", "zoo_test_plugin:clash"))
    [problem] = models.plugin_problems()
    assert "the name 'lenet' is taken by the model from mnist_zoo.models" in problem
    assert models.model_info("lenet").source == "mnist_zoo.models"


def test_list_warns_about_a_broken_entry_point_and_lists_the_rest(plugin_dir, monkeypatch, capsys):
    from mnist_zoo.cli import main

    fake_entry_points(monkeypatch, ("tiny", "zoo_test_plugin:tiny"), ("broken", "zoo_broken_plugin:x"))
    assert main(["list", "--json"]) == 0
    captured = capsys.readouterr()
    listed = {m["model"]: m["source"] for m in json.loads(captured.out)["models"]}
    assert listed["tiny"] == "entry point tiny = zoo_test_plugin:tiny" and "lenet" in listed
    assert captured.err.startswith("warning: model plugin broken (zoo_broken_plugin:x): ModuleNotFoundError")
    assert len(captured.err.splitlines()) == 1


def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{cwd}"}
    env.pop(models.SPECS_ENV, None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def test_a_spec_trains_and_exports_like_a_zoo_model(plugin_dir, tmp_path):
    # The checkpoint directory of tests/conftest.py's fixture, passed on to the subprocesses.
    proc = _cli("mnist_zoo", "train", "zoo_test_plugin:tiny", "--json", "--no-progress", cwd=plugin_dir)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["model"] == "tiny" and record["epochs"] == 1 and record["test_accuracy"] > 0.5
    out = tmp_path / "out"
    proc = _cli("export", "zoo_test_plugin:tiny", "--onnx", "--out", str(out), "--json", cwd=plugin_dir)
    assert proc.returncode == 0, proc.stderr
    [artifact] = json.loads(proc.stdout)["artifacts"]
    assert artifact["model"] == "tiny" and artifact["verification"]["ok"] and (out / "tiny.onnx").is_file()


def test_a_broken_spec_on_the_command_line_is_one_line(plugin_dir):
    for module in ("mnist_zoo", "export"):
        args = ["train"] if module == "mnist_zoo" else []
        option = "--onnx" if module == "export" else "--json"
        proc = _cli(module, *args, "zoo_test_plugin:five", option, cwd=plugin_dir)
        assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("error: model plugin 'five' (zoo_test_plugin:five): given float32")


def test_a_plugin_recipe_file_is_read_for_its_declared_name(plugin_dir, tmp_path):
    from mnist_zoo.recipes import read_recipe_file, write_recipe_file

    models.model_info("zoo_test_plugin:plain")
    path = write_recipe_file(tmp_path / "r.json", "plain", GENERIC, {})
    assert read_recipe_file(path, "plain").lr == GENERIC.lr  # checked against the plugin's declared name
    with pytest.raises(UserError, match="is a recipe for 'plain', not 'lenet'"):
        read_recipe_file(path, "lenet")


RUNTIME_PLUGIN = """
from bench.runtimes import Job, Predictor, Runtime, _torch_predictor

seen = []


def load(job: Job) -> Predictor:
    seen.append(job)
    return _torch_predictor(job.model.eval(), job.device, {"plugin": "doubled"})


RT = Runtime("twin", "Twin eager", "checkpoint", load)
EAGER = Runtime("eager", "Another eager", "onnx", load)
WRONG = "not a runtime"
"""


@pytest.fixture
def runtime_dir(plugin_dir, monkeypatch):
    from bench import runtimes

    (plugin_dir / "zoo_rt_plugin.py").write_text(RUNTIME_PLUGIN)
    monkeypatch.delenv(runtimes.SPECS_ENV, raising=False)
    saved = dict(runtimes._PLUGINS), dict(runtimes._BROKEN), runtimes._loaded
    yield plugin_dir
    for live, old in zip((runtimes._PLUGINS, runtimes._BROKEN), saved[:2], strict=True):
        live.clear()
        live.update(old)
    runtimes._loaded = saved[2]
    sys.modules.pop("zoo_rt_plugin", None)


def test_a_runtime_spec_builds_predictors_through_its_factory(runtime_dir, tmp_path):
    from bench import runtimes

    rt = runtimes.runtime("zoo_rt_plugin:RT")
    assert (rt.name, rt.source) == ("twin", "zoo_rt_plugin:RT") and runtimes.runtime_names()[-1] == "twin"
    assert (
        runtimes.label("twin") == "Twin eager"
        and "twin" not in runtimes.LABELS
        and runtimes.in_order(["twin", "eager"])
        == [
            "eager",
            "twin",
        ]
    )
    torch.manual_seed(0)
    model, x = models.get_model("lenet").eval(), torch.randn(4, 1, 28, 28)
    exports = runtimes.Exports(tmp_path, None)
    predictor = runtimes.build("twin", model, torch.device("cpu"), 1, exports, "lenet", batch=4)
    assert torch.equal(predictor.logits(x), model(x)) and predictor.info == {"plugin": "doubled"}
    [job] = sys.modules["zoo_rt_plugin"].seen
    assert job.artifact.name.endswith(".checkpoint.pt") and job.artifact.is_file() and job.batch == 4
    assert runtimes.unavailable("twin", torch.device("cpu")) is None
    assert "plugin runtime" in runtimes.bf16_unavailable("twin", torch.device("cpu"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "zoo_rt_plugin:EAGER",
            "runtime plugin zoo_rt_plugin:EAGER (zoo_rt_plugin:EAGER): the name 'eager' is taken",
        ),
        ("zoo_rt_plugin:WRONG", "runtime plugin zoo_rt_plugin:WRONG (zoo_rt_plugin:WRONG): names str, not a"),
        (
            "zoo_broken_plugin:RT",
            "runtime plugin zoo_broken_plugin:RT (zoo_broken_plugin:RT): ModuleNotFoundError",
        ),
    ],
)
def test_a_broken_runtime_is_one_line_naming_it(runtime_dir, spec, message):
    from bench import runtimes

    with pytest.raises(UserError, match="^" + re.escape(message)):
        runtimes.runtime(spec)
    assert runtimes.runtime("eager").label == "PyTorch eager"


def test_a_broken_runtime_entry_point_is_a_warning(runtime_dir, monkeypatch):
    from bench import runtimes

    eps = [
        EntryPoint("gone", "zoo_broken_plugin:RT", runtimes.GROUP),
        EntryPoint("twin", "zoo_rt_plugin:RT", runtimes.GROUP),
    ]
    monkeypatch.setattr(runtimes, "entry_points", lambda group: [e for e in eps if e.group == group])
    runtimes._loaded = False
    assert runtimes.runtime_names()[-1] == "twin"
    [problem] = runtimes.runtime_problems()
    assert problem.startswith("runtime plugin gone (zoo_broken_plugin:RT): ModuleNotFoundError")
    with pytest.raises(UserError, match="^runtime plugin gone"):
        runtimes.runtime("gone")


def _collect(plugin_dir: Path, *options: str) -> subprocess.CompletedProcess:
    cmd = [
        "-m",
        "pytest",
        str(ROOT / "bench" / "test_inference.py"),
        "--benchmark-only",
        "--collect-only",
        "-q",
    ]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{plugin_dir}"}
    return subprocess.run([sys.executable, *cmd, *options], capture_output=True, text=True, env=env, cwd=ROOT)


def test_the_benchmark_selects_plugin_models_and_runtimes(runtime_dir):
    proc = _collect(
        runtime_dir,
        "--bench-models",
        "lenet,zoo_test_plugin:tiny",
        "--bench-runtimes",
        "ort-fp32,zoo_rt_plugin:RT",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {m.groups() for m in re.finditer(r"::test_latency\[(\w+)-([\w-]+?)-b\d+-", proc.stdout)}
    assert rows == {(m, rt) for m in ("lenet", "tiny") for rt in ("ort-fp32", "twin")}
    proc = _collect(runtime_dir, "--bench-models", "lenet,zoo_test_plugin:five")
    assert (
        proc.returncode != 0
        and "--bench-models: model plugin 'five' (zoo_test_plugin:five): given" in proc.stderr
    )
