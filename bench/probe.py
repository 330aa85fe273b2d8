"""The regression check's probe: one fresh process that builds or measures the watched figures of one tree.

    python bench/probe.py build DIR                      # this tree's exports of every model, into DIR
    python bench/probe.py measure DIR --threads 1        # one JSON line: every watched figure, measured once
    python bench/probe.py measure DIR --inject 0.10      # each timed call made 10% longer (calibration only)

`python -m bench check --against REF` (bench/check.py) runs this file, always the head tree's copy, with the
working directory and PYTHONPATH set to the tree under test (head, or REF checked out in a temporary worktree):
the benchmark's code is head's, the code it measures is each tree's own (its models, exporters, ONNX Runtime
session and training loop), as asv runs one benchmark suite over many commits. So it imports nothing from
bench/ (that would be the tree's copy, which may predate this file), only the small, long-standing API of
mnist_zoo and export; a figure the tree cannot produce is reported with the reason, not measured.

Figures (seeded weights and seeded random images: a forward pass's or a training step's time does not depend
on their values, and reading MNIST in every process would cost more than a round's measurement):
  latency/MODEL/RUNTIME/b1      the QUANTILE (10%) of single calls at batch 1: eager, TorchScript, ORT fp32
                                and ORT int8 (the p50 is recorded beside it)
  latency/lenet/ort-fp32/b1000  the same at batch 1000
  training/lenet                images/s of the default recipe at the QUANTILE of its step times: a short
                                training run every TRAIN_EVERY passes, TRAIN_STEPS steps timed after WARM_STEPS
Each figure also lists "slices": the QUANTILE of each slice (training: each step's images/s), in order.
Each figure is measured in PASSES passes over all of them, SLICE_S of calls each (at least MIN_CALLS) after a
warm-up: its calls are spread over the process's life, so that a quiet moment of the machine reaches each
figure. At 1 thread the calls are timed on the thread's CPU clock (CLOCK says why), at more on the wall clock.

--turns IN OUT first|second: base and head run as a pair on the same CPUs and take turns, slice by slice (and
step by step in training), handing over through two pipes (Turns): slice k of one and slice k of the other ran
one after the other on the same CPU, tens of milliseconds apart, and each figure's "slices" list lets the check
compare them pairwise. Why: on a shared host a virtual CPU runs about 1.5x slower for tens of milliseconds to
seconds at a time (another guest on its core's other hyperthread, presumably); two processes measured at the
same time on two CPUs, or one after the other, often see different shares of it (docs/regression-check.md).

Each probe fixes glibc's allocator thresholds before torch loads (steady_allocator): by default glibc moves
its mmap threshold with a process's history, so two processes of the same code kept a training step's tensors
in different places and their steps differed by up to 25% (docs/regression-check.md).

--inject F lengthens each timed call (a training step) by F of its own time, busy-waiting: a known slowdown
of one side, to measure the check's power (bench/calibrate.py). Never used otherwise.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__" and sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # this file's folder is head's bench/: its modules must not shadow the tree's

RUNTIMES = ("eager", "torchscript", "ort-fp32", "ort-int8")
FILES = {"torchscript": "{}.ts.pt", "ort-fp32": "{}.onnx", "ort-int8": "{}.int8.onnx"}
SEED = 0
PASSES, SLICE_S, WARMUP_S, MIN_CALLS = 9, 0.01, 0.03, 5  # batch 1000 (~15 ms a call): 45 calls a process
TRAIN_EVERY = 3  # passes: a training run (~0.5 s) in every third
# timed steps per pass, after its warm-up steps: lenet's steps wander by 1.5x over a fraction of a second even
# in CPU time, and its figure's spread between processes fell from about 5% to about 2% from 10 steps to 30
TRAIN_MODEL, TRAIN_STEPS, WARM_STEPS = "lenet", 30, 3
# The quantile of a process's calls (training: steps) that is its figure. Not the median: another process that
# takes the CPU for a while lengthens the calls it interrupts, and how many it interrupts changes from one
# process to the next; the fastest tenth of the calls are those it left alone, and move with the code.
QUANTILE = 0.1


def _model(name: str):
    import torch

    from mnist_zoo.models import get_model

    torch.manual_seed(SEED)
    return get_model(name).eval()


def build(out: Path) -> dict:
    """This tree's artifacts of every model (its own exporters), and what failed: {model/runtime: error}."""
    from mnist_zoo import data
    from mnist_zoo.models import list_models

    out.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    calibration = None
    for name in list_models():
        model = _model(name)
        for runtime, pattern in FILES.items():
            path = out / pattern.format(name)
            try:
                if runtime == "torchscript":
                    from export.to_torchscript import export_torchscript

                    export_torchscript(model, path)
                elif runtime == "ort-fp32":
                    from export.to_onnx import export_onnx

                    export_onnx(model, path)
                else:
                    from export.quantize import calibration_images, quantize_int8

                    if calibration is None:  # the tree's own choice of calibration images
                        calibration = calibration_images(data.load("train"))
                    quantize_int8(out / FILES["ort-fp32"].format(name), path, calibration)
            except Exception as e:  # any failure of this tree's exporter: that figure is not measured
                failed[f"{name}/{runtime}"] = _why(e)
    return {"models": list(list_models()), "failed": failed}


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def _predictor(runtime: str, name: str, artifacts: Path, threads: int, x):
    """A function running one call of `runtime` on `x` with this tree's loaders."""
    import torch

    if runtime == "eager":
        module = _model(name)
    elif runtime == "torchscript":
        from export.to_torchscript import load_torchscript

        module, _ = load_torchscript(artifacts / FILES[runtime].format(name))
    else:
        from export.verify import ort_session

        session = ort_session(artifacts / FILES[runtime].format(name), threads)
        feed = {session.get_inputs()[0].name: x.numpy()}
        out = [session.get_outputs()[0].name]
        return lambda: session.run(out, feed)

    def run():
        with torch.inference_mode():
            return module(x)

    return run


# The clock of the timed calls: with one thread, the CPU time of the calling thread, where every runtime runs
# its whole call (ONNX Runtime and torch at 1 intra-op thread). Another process that takes the CPU mid-call
# stops this clock, where it would add its time slice to a wall clock: a 15 ms training step on a machine with
# two busy processes per core was interrupted nearly every time, and its wall time measured the load. With
# more threads, the work is on pool threads this clock does not see: the wall clock (main() chooses).
CLOCK = {"clock": time.thread_time}


def _spin(seconds: float) -> None:
    """Busy-wait `seconds` on the wall clock: a read of it takes ~30 ns, where the thread's CPU clock is a system
    call of ~0.5 µs, in whose steps a spin of 1 µs (10% of a 10 µs call) fell short or overshot by half its
    length: a 10% slowdown showed as 4-6% in the fastest calls. Over a few µs the CPU is not taken away."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@functools.cache
def _read_cost() -> float:
    """Seconds between two back-to-back reads of CLOCK (the median of 1,000, once a process): a recorded time
    holds one more read than t1 - t0 does, which the injected spin must lengthen too."""
    clock = CLOCK["clock"]
    gaps = sorted(-clock() + clock() for _ in range(1000))
    return gaps[len(gaps) // 2]


def _calls(fn, seconds: float, inject: float, times: list[float]) -> None:
    """Call fn for `seconds` (at least MIN_CALLS times), appending each call's time (lengthened by `inject`)."""
    clock, start, n = CLOCK["clock"], time.perf_counter(), 0
    read = _read_cost() if inject else 0.0
    while n < MIN_CALLS or time.perf_counter() - start < seconds:
        t0 = clock()
        fn()
        t1 = clock()
        _spin((t1 - t0 + read) * inject)  # a no-op at 0, on both sides alike
        times.append(clock() - t0)
        n += 1


def _images(n: int):
    """n seeded random MNIST-shaped images (uint8 [n, 28, 28]) and labels, as the tree's data.Split."""
    import torch

    from mnist_zoo import data

    g = torch.Generator().manual_seed(SEED)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    return data.Split(images, torch.randint(0, 10, (n,), generator=g))


def _recipe():
    """lenet's default recipe, one epoch, from wherever the tree keeps recipe_for."""
    try:
        from mnist_zoo.recipes import recipe_for
    except ImportError:  # trees before mnist_zoo/recipes.py
        from mnist_zoo.train import recipe_for
    return recipe_for(TRAIN_MODEL, epochs=1)


def _training_steps(threads: int, inject: float, turns: Turns) -> list[float]:
    """Seconds of each of TRAIN_STEPS steps of lenet's default recipe after its first WARM_STEPS (a new
    training run: its model, optimizer and first steps' allocations), each step lengthened by `inject`; with a
    partner, the two runs take turns step by step."""
    import torch

    from mnist_zoo.train import train

    recipe = _recipe()
    split = _images((WARM_STEPS + TRAIN_STEPS) * recipe.batch_size)
    steps: list[float] = []
    clock = CLOCK["clock"]
    started = [clock()]

    def on_step(info: dict) -> None:  # called after every step: from the turn's start to here is one step
        took = clock() - started[0]
        _spin(took * inject)
        steps.append(clock() - started[0])
        turns.done()
        turns.wait()
        started[0] = clock()

    torch.set_num_threads(threads)
    train(TRAIN_MODEL, recipe, split, seed=SEED, on_step=on_step)
    return steps[WARM_STEPS:]


class Turns:
    """Taking turns with a partner process on the same CPU: wait() blocks until the partner hands over (a
    byte on `inbox`), done() hands over (a byte on `outbox`); one byte is ever in flight. Once the partner has
    ended (its end of the pipe closed), neither blocks. Without pipes (no partner), both do nothing."""

    def __init__(self, fds: tuple[int, int] | None = None, first: bool = True):
        self.inbox, self.outbox = fds or (None, None)
        self.first = first

    def begin(self) -> None:
        """Ready: the second hands the first its first turn, so neither times a call while the other sets up."""
        if not self.first:
            self.done()

    def wait(self) -> None:
        if self.inbox is not None and not os.read(self.inbox, 1):
            self.inbox = None  # the partner has ended

    def done(self) -> None:
        if self.outbox is not None:
            try:
                os.write(self.outbox, b".")
            except BrokenPipeError:  # the partner has ended
                self.outbox = None


def _quantile(values: list[float]) -> float:
    return sorted(values)[int(len(values) * QUANTILE)]


def measure(
    artifacts: Path, threads: int, inject: float, only: list[str] | None = None, turns: Turns | None = None
) -> dict:
    """Every watched figure this tree can produce: {name: {"value", "unit", "calls", "slices"} or {"error"}};
    "slices": the figure of each slice (training: each step's images/s). With a partner (`turns`), every slice of calls and
    every training step waits for its turn: the partner's slice k and this one's ran one after the other."""
    import torch

    from mnist_zoo import data
    from mnist_zoo.models import list_models

    torch.set_num_threads(threads)
    images = _images(1000).images
    x1, x1000 = data.normalize(images[:1]), data.normalize(images)
    built = json.loads((artifacts / "build.json").read_text())
    wanted = [(f"latency/{m}/{rt}/b1", m, rt, x1) for m in list_models() for rt in RUNTIMES]
    wanted.append(("latency/lenet/ort-fp32/b1000", "lenet", "ort-fp32", x1000))
    figures: dict[str, dict] = {}
    runs = {}
    for name, model, runtime, x in wanted:
        if only and name not in only:
            continue
        if f"{model}/{runtime}" in built["failed"]:
            figures[name] = {"error": f"not built: {built['failed'][f'{model}/{runtime}']}"}
            continue
        try:
            runs[name] = _predictor(runtime, model, artifacts, threads, x)
            _calls(runs[name], WARMUP_S, 0.0, [])
        except Exception as e:
            figures[name] = {"error": _why(e)}
    slices: dict[str, list[list[float]]] = {name: [] for name in runs}
    training, runs_steps, failed = f"training/{TRAIN_MODEL}", [], None
    turns = turns or Turns()
    turns.begin()
    for i in range(PASSES):  # each figure's calls spread over the process's life, between the others'
        for name, fn in runs.items():
            turns.wait()
            slices[name].append([])
            _calls(fn, SLICE_S, inject, slices[name][-1])
            turns.done()
        if (not only or training in only) and failed is None and i % TRAIN_EVERY == 0:
            turns.wait()
            try:
                runs_steps.append(_training_steps(threads, inject, turns))
            except Exception as e:
                failed = _why(e)
            turns.done()
    for name, parts in slices.items():
        t = sorted(c for part in parts for c in part)
        figures[name] = {
            "value": _quantile(t),
            "p50": t[len(t) // 2],
            "unit": "s",
            "calls": len(t),
            "slices": [_quantile(part) for part in parts],
        }
    if failed:
        figures[training] = {"error": failed}
    elif runs_steps:
        batch = _recipe().batch_size
        figures[training] = {
            "value": batch / _quantile([s for run in runs_steps for s in run]),
            "unit": "images/s",
            "slices": [batch / s for run in runs_steps for s in run],  # steps: the partner's took turns
        }
    return figures


def steady_allocator() -> bool:
    """Fix glibc malloc's thresholds for this process, before torch allocates: blocks under 32 MiB come from
    the heap, which grows in steps of 64 MiB and is never trimmed. By default each freed mmap'd block raises the
    mmap threshold, so whether a training step's 5 MB activations come from the heap or from fresh pages (page
    faults every step) depends on what the process did before. Measured here, A/A pairs of the training figure
    (12 each): pair changes spread with a MAD of 1.7%, up to 20% off, by default; 0.5%, at most 1.5%, with these
    settings. False where the C library is not glibc (nothing to fix, or no mallopt)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # malloc.h
    settings = ((m_mmap_threshold, 32 << 20), (m_trim_threshold, 1 << 30), (m_top_pad, 64 << 20))
    return all(mallopt(option, value) == 1 for option, value in settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/probe.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("build", "measure"))
    parser.add_argument("dir", type=Path, help="the folder of this tree's artifacts")
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads (default: 1)")
    parser.add_argument("--inject", type=float, default=0.0, help="calibration only: slow each timed call")
    parser.add_argument("--only", nargs="*", help="measure these figures only")
    parser.add_argument(
        "--turns", nargs=3, metavar=("IN", "OUT", "ORDER"), help="take turns (pipes; first|second)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    CLOCK["clock"] = time.thread_time if args.threads == 1 else time.perf_counter
    if args.action == "build":
        found = build(args.dir)
        (args.dir / "build.json").write_text(json.dumps(found))
    else:
        turns = (
            Turns((int(args.turns[0]), int(args.turns[1])), args.turns[2] == "first") if args.turns else None
        )
        fixed = steady_allocator()  # before measure() imports torch; building times nothing
        found = {
            "figures": measure(args.dir, args.threads, args.inject, args.only, turns),
            "threads": args.threads,
        }
        found["clock"] = CLOCK["clock"].__name__
        found["allocator"] = "glibc, fixed thresholds" if fixed else "as the C library sets it"
        import torch

        found["versions"] = {"torch": torch.__version__, "python": sys.version.split()[0]}
    print(json.dumps(found), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
