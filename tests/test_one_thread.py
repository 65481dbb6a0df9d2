"""The one-thread worker: its own OpenMP team of one, the process's thread count untouched, same results."""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import torch

from sipmask.model.detector import build_model
from sipmask.ops import one_thread
from sipmask.ops.one_thread import openmp_runtime, run_on_one_thread


def test_openmp_runtime_is_found_where_torch_uses_openmp():
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        assert openmp_runtime() is not None
    else:  # elsewhere the worker is simply not used
        assert run_on_one_thread(threading.current_thread) is threading.current_thread()


def test_worker_runs_one_omp_thread_and_leaves_the_callers_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        caller = threading.current_thread()
        worker_thread = run_on_one_thread(threading.current_thread)
        assert worker_thread is not caller
        assert run_on_one_thread(torch.get_num_threads) == 1
        assert torch.get_num_threads() == 2
        fresh = []
        t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert fresh == [2]  # torch's process-wide count is untouched: new threads still get it
    finally:
        torch.set_num_threads(before)


def test_worker_keeps_the_callers_grad_mode_and_raises_its_errors():
    with torch.inference_mode():
        assert run_on_one_thread(torch.is_inference_mode_enabled)
    with torch.no_grad():
        assert not run_on_one_thread(torch.is_grad_enabled)
    assert run_on_one_thread(torch.is_grad_enabled)

    def fail():
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run_on_one_thread(fail)
    assert run_on_one_thread(run_on_one_thread, lambda: 7) == 7  # nested: inline, no deadlock


def test_without_a_runtime_the_call_runs_inline(monkeypatch):
    monkeypatch.setattr(one_thread, "_shared_worker", lambda: None)
    assert run_on_one_thread(threading.current_thread) is threading.current_thread()


def test_serial_postprocess_gives_the_same_detections():
    torch.manual_seed(0)
    model = build_model("tiny_classic", num_classes=3)
    image = np.random.default_rng(0).integers(0, 256, (200, 260, 3), dtype=np.uint8)
    serial, inline = model.for_inference(serial_postprocess=True), model.for_inference()
    assert serial.serial_postprocess and not inline.serial_postprocess and not model.serial_postprocess
    a, b = serial.predict([image], score_thr=0.0)[0], inline.predict([image], score_thr=0.0)[0]
    assert len(a["scores"]) > 0
    for key in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(a[key], b[key]), key


def test_worker_runs_mkl_on_one_thread_and_leaves_the_callers_count():
    """A matrix product on the worker must not start an MKL team of torch's size (see the module
    docstring: with more OpenMP threads than cores every later parallel op of the caller slows down)."""
    get_max = one_thread._mkl_function("mkl_get_max_threads")
    if get_max is None or one_thread._shared_worker() is None:
        pytest.skip("torch here has no MKL (or no OpenMP runtime): nothing to limit")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_on_one_thread(lambda: torch.randn(64, 64) @ torch.randn(64, 64))
        assert run_on_one_thread(get_max) == 1
        assert get_max() == 2
    finally:
        torch.set_num_threads(before)
