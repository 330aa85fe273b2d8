"""The `ort-web` runtime: onnxruntime-web (WebAssembly) in headless Chromium, timed inside the page.

    pytest bench/test_web.py --benchmark-only                      # every model at batch 1
    pytest --benchmark-only -k "lenet and (b1- or ort_web)"        # beside the other runtimes' batch-1 rows

Per row (extra_info kind "inference", runtime "ort-web", batch 1, the fields of bench/test_inference.py): the
model's ONNX file (the one the ort-fp32 rows load) in the page that `python -m export --web` writes, served by
export.web on 127.0.0.1, cross-origin isolated (performance.now() ticks every 5 µs, not 100, and wasm threads
work), loaded by predict.js with the row's thread count. The input is a real test image, made into a tensor
before timing. Each timed round asks the page for one call of model.logits(x), which the page times with
performance.now(); the percentiles and images/s are of those in-page times, after the warm-up every row gets
(bench/timing.py), with the contention measured meanwhile (Chromium's processes are this one's children, so
their CPU time is not counted as other processes'). pytest-benchmark's own columns time the round trip from
Python through Playwright instead (also in the row: round_trip_p50_s). Skipped, with the reason, without
Chromium or Playwright, without onnxruntime-web (no npm and no cached copy), and in --bench-quick.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import timing
from bench.runtimes import Unavailable
from export import web, web_browser
from mnist_zoo.data import normalize
from mnist_zoo.models import list_models, model_info
from mnist_zoo.targets import BENCH_LOGIT_ATOL
from mnist_zoo.util import UserError

# Run in the page: the input tensor made once (as the other runtimes' prepare), then one timed call per round.
SETUP = """async (pixels) => {
  const model = window.mnistZoo.model;
  window.benchInput = model.input(Uint8Array.from(pixels));
  window.benchTimes = [];
  const logits = Array.from(await model.logits(window.benchInput));
  return { logits, threads: model.threads, version: model.version, isolated: self.crossOriginIsolated };
}"""
STEP = """async () => {
  const t0 = performance.now();
  await window.mnistZoo.model.logits(window.benchInput);
  window.benchTimes.push(performance.now() - t0);
}"""


@pytest.fixture(scope="module")
def browser():
    try:
        with web_browser.chromium() as b:
            yield b
    except web_browser.Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def ort_web(browser) -> dict[str, bytes]:
    try:
        return web.ort_web_files()
    except UserError as e:
        pytest.skip(f"onnxruntime-web unavailable: {e}")


@pytest.mark.parametrize("model_name", list_models())
def test_ort_web_latency(
    benchmark,
    new_row,
    bench_options,
    threads,
    zoo_model,
    exports,
    test_split,
    browser,
    ort_web,
    tmp_path,
    model_name,
):
    if bench_options.quick:
        pytest.skip(
            "ort-web is left out of --bench-quick (tests/test_web.py proves the page; the check needs no browser)"
        )
    model, source = zoo_model(model_name, trained=False)
    try:
        onnx_file = exports.path(model_name, model, "onnx")
    except Unavailable as e:
        pytest.skip(str(e))
    page_dir = web.build(tmp_path / "web", [onnx_file], ort_web)
    image = test_split.images[:1]
    with web_browser.serving(web.server(page_dir, port=0)) as url:
        tab = web_browser.open_tab(browser, f"{url}?threads={threads}")
        tab.page.wait_for_selector("html[data-model]")
        page = tab.page.evaluate(SETUP, image.flatten().tolist())
        if page["threads"] != threads:
            pytest.skip(f"onnxruntime-web runs {page['threads']} wasm thread(s) here, not {threads}")
        with torch.inference_mode():
            reference = model(normalize(image))[0].numpy()
        assert np.abs(np.array(page["logits"]) - reference).max() <= BENCH_LOGIT_ATOL["cpu"]
        benchmark.group = f"inference: {model_name}, batch 1, cpu"
        budget_s, min_rounds = bench_options.budget_s, max(timing.MIN_ROUNDS, bench_options.min_rounds)
        stats = timing.measure(
            benchmark, lambda: tab.page.evaluate(STEP), batch=1, budget_s=budget_s, min_rounds=min_rounds
        )
        in_page = [ms / 1e3 for ms in tab.page.evaluate("window.benchTimes")[-stats["rounds"] :]]
        assert tab.outside == [] and tab.errors == [], (tab.outside, tab.errors)
        tab.page.context.close()
    # The percentiles are the page's; the round trip through Playwright is what pytest-benchmark timed.
    timed = {**stats, "round_trip_p50_s": stats["p50_s"], **timing.percentile_stats(in_page, batch=1)}
    versions = {"browser": f"Chromium {browser.version}", "onnxruntime_web": page["version"]}
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
        **timed,
        timed="in the page: performance.now() around model.logits(x)",
    )
