"""The `ort-web` runtime: onnxruntime-web (WebAssembly) in headless Chromium, timed inside the page.

    pytest bench/test_web.py --benchmark-only                      # every model at batch 1
    pytest --benchmark-only -k "lenet and (b1 and not b1000 or ort_web)"   # beside the other batch-1 rows

Per row (extra_info kind "inference", runtime "ort-web", batch 1, the fields of bench/test_inference.py): the
model's ONNX file (the one the ort-fp32 rows load) in the page that `python -m export --web` writes, served by
export.web on 127.0.0.1, cross-origin isolated (performance.now() ticks every 5 µs, not 100, and wasm threads
work), loaded by predict.js with the row's thread count. The input is a real test image, made into a tensor
before timing. The page warms up as bench/timing.py does, then times each of `rounds` back-to-back calls of
model.logits(x) with performance.now(): the same single calls, one after another, that the other runtimes'
rows time. (Asking the page for one call per Playwright round trip instead leaves it idle between calls, which
adds 100-200 µs to every call.) pytest-benchmark cannot see inside the browser, so the samples it reports are
these in-page times; the contention is measured around them (Chromium's processes are children of this one,
so their CPU time is not counted as other processes'). Then the page and ORT fp32 in Python (the ort-fp32
row's runtime, same file, same threads) are timed in turn, PAIRS times, for `vs_ort_fp32_paired`: a ratio
that a drifting machine moves on both sides alike. Skipped, with the reason, without Chromium or Playwright,
without onnxruntime-web (no npm and no cached copy), and in --bench-quick.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import stats as ci
from bench import timing
from bench.runtimes import Unavailable, build
from export import web, web_browser
from mnist_zoo.cpu import Contention
from mnist_zoo.data import normalize
from mnist_zoo.models import list_models, model_info
from mnist_zoo.targets import BENCH_LOGIT_ATOL

PAIRS = 8  # interleaved segments of the page and of ORT fp32 in Python, for the paired ratio
# Run in the page: the input tensor made once (as the other runtimes' prepare), a warm-up (timing.warm_up's
# rule; returns the median of its second half, ms), then `rounds` single calls, each timed (ms).
SETUP = """async (pixels) => {
  const model = window.mnistZoo.model;
  window.benchInput = model.input(Uint8Array.from(pixels));
  const logits = Array.from(await model.logits(window.benchInput));
  return { logits, threads: model.threads, version: model.version, isolated: self.crossOriginIsolated };
}"""
TIMED = """async (rounds) => {
  const [model, x, times] = [window.mnistZoo.model, window.benchInput, []];
  for (let i = 0; i < rounds; i++) {
    const t0 = performance.now();
    await model.logits(x);
    times.push(performance.now() - t0);
  }
  return times;
}"""
WARM_UP = f"""async () => {{
  const [model, x, times, start] = [window.mnistZoo.model, window.benchInput, [], performance.now()];
  while (times.length < {timing.MIN_WARMUP_CALLS} || performance.now() - start < {timing.WARMUP_S * 1e3}) {{
    const t0 = performance.now();
    await model.logits(x);
    times.push(performance.now() - t0);
  }}
  const late = times.slice(times.length >> 1).sort((a, b) => a - b);
  return late[late.length >> 1];
}}"""


def paired_with_ort_fp32(tab: web_browser.Tab, predictor, x, segment: int) -> dict:
    """ORT fp32 in Python against the page, interleaved as bench/timing.py pairs runtimes with eager (A B A B):
    the median over PAIRS segments of median(ORT fp32 in Python) / median(page). Below 1, the page is slower."""
    timing.warm_up(lambda: predictor.run(x))
    ratios, reference = [], []
    for _ in range(PAIRS):
        page_s = np.median(tab.page.evaluate(TIMED, segment)) / 1e3
        python_s = timing._timed(lambda: predictor.run(x), segment)
        ratios.append(np.median(python_s) / page_s)
        reference += python_s
    return {
        "vs_ort_fp32_paired": float(np.median(ratios)),
        "vs_ort_fp32_paired_ci": list(ci.ratio_ci(ratios) or []) or None,
        "ort_fp32_p50_s": float(np.median(reference)),
        "ort_fp32_pairing": f"{PAIRS} segments of {segment} call(s), the page first",
    }


@pytest.fixture(scope="module")
def page_browser(bench_options, request):
    if bench_options.quick:  # before the browser starts
        pytest.skip("ort-web is left out of --bench-quick: the CI check needs no browser (tests/test_web.py)")
    return request.getfixturevalue("browser")


@pytest.mark.parametrize("model_name", list_models())
def test_ort_web_latency(
    benchmark,
    new_row,
    bench_options,
    threads,
    zoo_model,
    exports,
    test_split,
    page_browser,
    ort_web_files,
    tmp_path,
    model_name,
):
    model, source = zoo_model(model_name, trained=False)
    try:
        onnx_file = exports.path(model_name, model, "onnx")
    except Unavailable as e:
        pytest.skip(str(e))
    page_dir = web.build(tmp_path / "web", [onnx_file], ort_web_files)
    image = test_split.images[:1]
    with web_browser.serving(web.server(page_dir, port=0)) as url:
        tab = web_browser.open_tab(page_browser, f"{url}?threads={threads}")
        tab.page.wait_for_selector("html[data-model]")
        page = tab.page.evaluate(SETUP, image.flatten().tolist())
        if page["threads"] != threads:
            pytest.skip(f"onnxruntime-web runs {page['threads']} wasm thread(s) here, not {threads}")
        with torch.inference_mode():
            reference = model(normalize(image))[0].numpy()
        assert np.abs(np.array(page["logits"]) - reference).max() <= BENCH_LOGIT_ATOL["cpu"]
        benchmark.group = f"inference: {model_name}, batch 1, cpu"
        estimate_s = tab.page.evaluate(WARM_UP) / 1e3
        min_rounds = max(timing.MIN_ROUNDS, bench_options.min_rounds)
        rounds = timing.rounds_for(estimate_s, bench_options.budget_s, min_rounds)
        with Contention() as contention:
            times_ms = benchmark.pedantic(tab.page.evaluate, (TIMED, rounds), rounds=1, iterations=1)
        ort = build("ort-fp32", model, torch.device("cpu"), threads, exports, model_name)
        segment = max(1, int(timing.SEGMENT_S / estimate_s))
        paired = paired_with_ort_fp32(tab, ort, ort.prepare(normalize(image)), segment)
        assert tab.outside == [] and tab.errors == [], (tab.outside, tab.errors)
        tab.page.context.close()
    samples = [ms / 1e3 for ms in times_ms]
    benchmark.stats.stats.data[:] = samples  # pytest-benchmark's table and JSON: the page's per-call times
    stats = {
        **timing.percentile_stats(samples, batch=1, block=timing.segment_calls(estimate_s)),
        "budget_s": bench_options.budget_s,
        **contention.record(),
    }
    versions = {"browser": f"Chromium {page_browser.version}", "onnxruntime_web": page["version"]}
    new_row(
        "inference",
        model=model_name,
        runtime="ort-web",
        device="cpu",
        batch=1,
        threads=threads,
        macs=model_info(model_name).macs,
        weights=source,
        runtime_info={**versions, "wasm_threads": page["threads"], "cross_origin_isolated": page["isolated"]},
        **versions,
        **stats,
        **paired,
        timed="in the page: performance.now() around each of `rounds` back-to-back model.logits(x) calls",
    )
