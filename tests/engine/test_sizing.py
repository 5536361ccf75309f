"""Size-dependent defaults: the batch size from the free memory, the CPU estimate for large models,
out-of-memory errors told as such (a real failed allocation)."""

from __future__ import annotations

import pytest
import torch

from unirs_engine import sizing
from unirs_engine.checkpoint_info import cpu_has_native_bf16, default_dtype
from unirs_engine.engine import Engine, InvalidRequest, OutOfMemory
from unirs_engine.model.checkpoint import pick_device


def test_a_failed_allocation_is_recognised_as_out_of_memory():
    with pytest.raises(RuntimeError) as failed:
        torch.empty(10 ** 15, dtype=torch.uint8)   # a petabyte: the CPU allocator refuses
    assert sizing.is_out_of_memory(failed.value) and sizing.is_out_of_memory(MemoryError())
    assert not sizing.is_out_of_memory(RuntimeError("shape mismatch")) and not sizing.is_out_of_memory(ValueError())


def test_the_engine_reports_out_of_memory_with_figures_and_ways_out(tiny_checkpoint):
    engine = Engine.load(tiny_checkpoint, device="cpu", max_new_tokens=2)
    with pytest.raises(OutOfMemory, match=r"out of memory on cpu answering 4 request\(s\) at once: the model's "
                                          r"weights take 0\.0 GiB in float32, [\d.]+ GiB are free now; try a "
                                          r"smaller batch size \(now 4\), or dtype bfloat16, or closing other"):
        with engine._memory_errors(4):
            torch.empty(10 ** 15, dtype=torch.uint8)


def test_the_batch_size_fits_half_the_free_memory_and_at_most_eight():
    gib = 2 ** 30
    assert sizing.default_batch_size(free=10 * gib, per_request=1 * gib) == 5
    assert sizing.default_batch_size(free=100 * gib, per_request=1 * gib) == sizing.MAX_BATCH
    assert sizing.default_batch_size(free=1 * gib, per_request=4 * gib) == 1   # never 0


def test_engine_batch_size_defaults_from_memory_and_can_be_given(tiny_checkpoint):
    engine = Engine.load(tiny_checkpoint, device="cpu")
    assert engine.batch_size == sizing.MAX_BATCH == engine.info()["batch_size"]   # a tiny model fits 8
    assert Engine.load(tiny_checkpoint, device="cpu", batch_size=3).batch_size == 3
    with pytest.raises(InvalidRequest, match="batch_size must be an integer of at least 1, got 0"):
        Engine.load(tiny_checkpoint, device="cpu", batch_size=0)


def test_a_full_size_model_on_this_cpu_is_warned_about_and_a_tiny_one_not(tiny_checkpoint):
    reference = sizing.REFERENCE_CPU
    same = sizing.expected_cpu_seconds(int(reference["parameters"]), "bfloat16", threads=reference["threads"])
    assert same == pytest.approx(reference["seconds"]["bfloat16"])
    faster = sizing.expected_cpu_seconds(int(reference["parameters"]), threads=2 * reference["threads"])
    assert faster["ask"] == pytest.approx(reference["seconds"]["float32"]["ask"] / 2)
    assert sizing.expected_cpu_seconds(10 ** 9, "float16") == sizing.expected_cpu_seconds(10 ** 9, "float32")
    warning = sizing.cpu_warning("vila-3b", 3_140_000_000, "bfloat16", threads=2)
    assert warning == ("vila-3b (3.1 B parameters) runs on the CPU here in bfloat16: expect about 15 s per "
                       "question, 27 s per change caption and 68 s per 8-frame sequence; a GPU (device cuda) "
                       "answers in seconds")
    engine = Engine.load(tiny_checkpoint, device="cpu")
    assert engine.warning is None and engine.info()["warning"] is None


def test_a_large_model_runs_in_bfloat16_on_a_cpu_that_has_it():
    native = cpu_has_native_bf16()
    assert native == (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())   # torch agrees
    assert default_dtype("cpu", 3_000_000_000) == ("bfloat16" if native else "float32")
    assert default_dtype("cpu", 6_000_000) == "float32" and default_dtype("cuda", 6_000_000) == "bfloat16"
    assert pick_device("cpu", None, 3_000_000_000)[1] == getattr(torch, default_dtype("cpu", 3_000_000_000))
    assert pick_device("cpu", "float32", 3_000_000_000)[1] == torch.float32   # a given dtype wins
