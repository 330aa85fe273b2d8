"""Export's faults: a full disk while writing any format or the page, an unexpected web/ folder, an artifact too
large or malformed to read. Each is one line on stderr, its documented exit code, and nothing lost or half-written.

    pytest tests/test_export_faults.py

The full disk is real: a small tmpfs mounted for the test (as root; skipped with the reason elsewhere), so that
the writes of torch's, onnx's and onnxruntime's own code fail as they would on a full disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from export import cli, integrity, verify, web
from mnist_zoo.util import UserError

# What fits: lenet.onnx, .pt and .pt2 are about 165 KiB each, its int8 file 55 KiB, onnxruntime-web 14 MB.
DISKS = {  # the format's flags -> a tmpfs size that fills during that format's write
    "--onnx": "64k",
    "--torchscript": "64k",
    "--pt2": "64k",
    "--int8": "256k",  # the fp32 .onnx fits; the int8 pass's files do not
}


@pytest.fixture
def disk(tmp_path):
    """factory(size) -> the mount point of a fresh tmpfs of that size, unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("a full disk is simulated with a tmpfs, which needs root to mount")
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


@pytest.fixture
def fake_ort_web(monkeypatch):
    """factory(bytes each) -> onnxruntime-web stand-ins of that size (the real one is 14 MB and comes from npm)."""

    def make(size: int, fill: bytes = b"x") -> dict[str, bytes]:
        files = {name: fill * size for name in web.ORT_WEB_FILES}
        monkeypatch.setattr(web, "ort_web_files", lambda local=None: files)
        return files

    return make


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (dotfiles too) with its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


# --- a full disk ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", list(DISKS))
def test_a_full_disk_is_one_line_and_no_out_left(flag, disk, lenet_checkpoint, capsys):
    out = disk(DISKS[flag]) / "artifacts"
    assert cli.main(["lenet", flag, "--out", str(out)]) == 74
    assert "No space left on device" in one_line(capsys)
    assert not out.exists()  # no empty or partial --out: it did not exist before
    assert not list(out.parent.iterdir())


def test_a_full_disk_keeps_the_previous_artifacts(disk, lenet_checkpoint, capsys):
    out = disk("256k")
    (out / "lenet.pt").write_bytes(b"previous")
    (out / "lenet.pt.sha256").write_text("previous\n")
    before = tree(out)
    assert cli.main(["lenet", "--torchscript", "--pt2", "--out", str(out)]) == 74
    assert "cannot write lenet's artifacts" in one_line(capsys)
    assert tree(out) == before  # nothing replaced, no staging folder or temporary file left


def test_a_full_disk_while_writing_the_page_leaves_it_as_it_was(disk, lenet_checkpoint, fake_ort_web, capsys):
    out = disk("1m")
    fake_ort_web(1000)
    assert cli.main(["lenet", "--onnx", "--web", "--out", str(out)]) == 0
    page = tree(out / "web")
    assert sorted(page) == sorted([*web._page_files(), "lenet.onnx"])
    capsys.readouterr()
    fake_ort_web(400_000, b"y")  # a new onnxruntime-web that does not fit
    assert cli.main(["lenet", "--onnx", "--web", "--out", str(out)]) == 74
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"written before the failure: {out / 'lenet.onnx'}"
    assert err[1].startswith("error: cannot write the page in") and "No space left on device" in err[1]
    assert tree(out / "web") == page  # not one file of the page changed
    assert sorted(p.name for p in out.iterdir()) == ["lenet.onnx", "web"]  # no staging left


# --- web/ holding something unexpected -------------------------------------------------------------------------


def _file(web_dir: Path) -> None:
    web_dir.write_text("a file where the folder belongs")


def _link(web_dir: Path) -> None:
    (web_dir.parent / "elsewhere").mkdir()
    web_dir.symlink_to(web_dir.parent / "elsewhere")


def _foreign_file(web_dir: Path) -> None:
    web_dir.mkdir()
    (web_dir / "index.html").write_text("<p>the page</p>")
    (web_dir / "notes.txt").write_text("mine")


def _subfolder(web_dir: Path) -> None:
    (web_dir / "photos").mkdir(parents=True)


def _link_inside(web_dir: Path) -> None:
    web_dir.mkdir()
    (web_dir / "index.html").symlink_to("/etc/hostname")


def _damaged_model(web_dir: Path) -> None:
    web_dir.mkdir()
    (web_dir / "old.onnx").write_bytes(b"\x08\x07garbage")


@pytest.mark.parametrize(
    "make, message",
    [
        (_file, "is a file, not the page folder"),
        (_link, "is a symbolic link, not the page folder"),
        (_foreign_file, "holds what --web does not write (notes.txt;"),
        (_subfolder, "holds what --web does not write (photos/;"),
        (_link_inside, "holds what --web does not write (index.html;"),
        (_damaged_model, "old.onnx is not a readable ONNX model"),
    ],
)
def test_an_unexpected_web_folder_is_refused_before_any_work(make, message, tmp_path, capsys, monkeypatch):
    out = tmp_path / "artifacts"
    out.mkdir()
    make(out / "web")
    before = {str(p): (p.is_symlink(), p.is_file() and p.read_bytes()) for p in sorted(tmp_path.rglob("*"))}

    def no_work(*args, **kwargs):
        raise AssertionError("the export began before web/ was checked")

    monkeypatch.setattr(cli, "ensure_trained", no_work)
    monkeypatch.setattr(web, "ort_web_files", no_work)
    assert cli.main(["lenet", "--web", "--out", str(out)]) == 1
    assert message in one_line(capsys)
    after = {str(p): (p.is_symlink(), p.is_file() and p.read_bytes()) for p in sorted(tmp_path.rglob("*"))}
    assert after == before


def test_a_page_folder_of_our_own_files_is_accepted(tmp_path):
    web_dir = tmp_path / "web"
    shutil.copytree(web.PAGE, web_dir)
    (web_dir / ".models.json.123.abcdefgh.tmp").write_text("a killed write's leftover")
    web.check_page_dir(web_dir)
    web.check_page_dir(tmp_path / "absent")


# --- artifacts too large or malformed --------------------------------------------------------------------------


def _model(*, sealed: bool, broken: bool) -> onnx.ModelProto:
    """A one-node ONNX model; `broken`: its node reads an input nothing defines (parses, fails onnx.checker)."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 10])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])
    node = helper.make_node("Relu", ["nowhere" if broken else "image"], ["logits"])
    proto = helper.make_model(
        helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 20)]
    )
    return integrity.seal_onnx(proto) if sealed else proto


@pytest.mark.parametrize("sealed", [True, False])
def test_a_malformed_onnx_file_is_one_line(sealed, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(_model(sealed=sealed, broken=True), path)
    with pytest.raises(UserError, match=r"m.onnx fails onnx.checker: ") as e:
        verify.ort_session(path, check_seal=sealed)
    assert "\n" not in str(e.value)
    onnx.save_model(_model(sealed=sealed, broken=False), path)
    assert verify.ort_session(path, check_seal=sealed)  # the same model, well formed, loads


@pytest.mark.parametrize("suffix", [".onnx", ".int8.onnx", ".pt", ".pt2"])
def test_an_artifact_over_the_cap_is_refused_before_reading(suffix, tmp_path, monkeypatch):
    path = tmp_path / f"m{suffix}"
    path.write_bytes(b"\0" * 2048)
    integrity.write_digest(path, "0" * 64)
    monkeypatch.setattr(integrity, "MAX_ARTIFACT_BYTES", 1024)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read whole"))
    with pytest.raises(UserError, match=f"m{suffix} is 2,048 bytes, over the 1,024 an artifact may have"):
        if suffix.endswith(".onnx"):
            verify.ort_session(path)
        else:
            integrity.read_verified(path)


def test_help_lists_every_exit_code():
    """--help names every exit code export can end with (docs/reliability.md's table)."""
    text = " ".join(cli.build_parser().format_help().split())
    for words in (
        "0 done",
        "1 bad input",
        "2 bad arguments",
        "3 an artifact failed verification",
        "74 a write failed, e.g. a full disk",
        "130 interrupted (Ctrl-C)",
        "143 terminated (SIGTERM)",
    ):
        assert words in text, words
