"""The CPU deformable conv equals torchvision.ops.deform_conv2d (forward and all gradients)."""
from __future__ import annotations

import warnings

import pytest
import torch
import torchvision

from sipmask.ops.deform_conv import DeformConv2d, deform_conv2d

TOL = 1e-4  # acceptance: equal to torchvision within 1e-4


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _compare(batch: int, channels: int, out_channels: int, size: tuple[int, int], kernel: tuple[int, int],
             groups: int, offset_kind: str, bias: bool, stride: int = 1, padding: int = 1, dilation: int = 1,
             use_mask: bool = False, weight_groups: int = 1, seed: int = 0) -> None:
    """Forward and gradients (input, offset, weight, bias, mask) of ours vs torchvision, float32."""
    gen = torch.Generator().manual_seed(seed)
    (height, width), (kh, kw) = size, kernel
    out_h = _output_size(height, kh, stride, padding, dilation)
    out_w = _output_size(width, kw, stride, padding, dilation)
    x = torch.randn(batch, channels, height, width, generator=gen)
    offset = torch.randn(batch, 2 * groups * kh * kw, out_h, out_w, generator=gen)
    if offset_kind == "fractional":
        offset = offset * 1.5
    elif offset_kind == "large":  # many samples land in the zero padding or far outside
        offset = offset * 0.6 * max(height, width) + 0.3
    elif offset_kind == "integer":  # sample points exactly on pixels, the border and -1 / H
        offset = (offset * 2).round()
    elif offset_kind == "border":  # sample points in (-1, 0) and (H-1, H) (and W): partly in the padding
        taps = torch.arange(kh * kw)
        base_y = (torch.arange(out_h) * stride - padding).view(1, out_h, 1) + (taps // kw * dilation).view(-1, 1, 1)
        base_x = (torch.arange(out_w) * stride - padding).view(1, 1, out_w) + (taps % kw * dilation).view(-1, 1, 1)
        frac = torch.rand(offset.shape, generator=gen) * 0.98 + 0.01
        low_side = torch.rand(offset.shape, generator=gen) < 0.5
        target_y = torch.where(low_side[:, 0::2], frac[:, 0::2] - 1, frac[:, 0::2] + height - 1)
        target_x = torch.where(low_side[:, 1::2], frac[:, 1::2] - 1, frac[:, 1::2] + width - 1)
        offset[:, 0::2] = target_y - base_y.repeat(groups, 1, 1)
        offset[:, 1::2] = target_x - base_x.repeat(groups, 1, 1)
    weight = torch.randn(out_channels, channels // weight_groups, kh, kw, generator=gen) * 0.2
    bias_t = torch.randn(out_channels, generator=gen) if bias else None
    mask = torch.rand(batch, groups * kh * kw, out_h, out_w, generator=gen) if use_mask else None
    inputs = [t for t in (x, offset, weight, bias_t, mask) if t is not None]

    results = []
    for fn in (deform_conv2d, torchvision.ops.deform_conv2d):
        leaves = [t.clone().requires_grad_() for t in inputs]
        it = iter(leaves)
        args = [next(it), next(it), next(it)]
        b = next(it) if bias else None
        m = next(it) if use_mask else None
        out = fn(*args, b, stride=(stride, stride), padding=(padding, padding),
                 dilation=(dilation, dilation), mask=m)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1))
        grads = torch.autograd.grad(out, leaves, grad_out)
        results.append((out, grads))
    (ours, our_grads), (ref, ref_grads) = results
    assert ours.shape == ref.shape == (batch, out_channels, out_h, out_w)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=0, atol=TOL)
    names = ["input", "offset", "weight"] + (["bias"] if bias else []) + (["mask"] if use_mask else [])
    for name, g_ours, g_ref in zip(names, our_grads, ref_grads):
        scale = max(1.0, g_ref.abs().max().item())  # weight grads sum many terms: compare relative to size
        torch.testing.assert_close(g_ours / scale, g_ref / scale, rtol=0, atol=TOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("offset_kind", ["fractional", "large", "integer", "border"])
@pytest.mark.parametrize("groups", [1, 4])
def test_matches_torchvision_offsets(offset_kind: str, groups: int) -> None:
    _compare(2, 8, 6, (9, 11), (3, 3), groups, offset_kind, bias=True)


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (37, 41)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torchvision_sizes(size: tuple[int, int], bias: bool) -> None:
    _compare(2, 8, 5, size, (3, 3), 4, "fractional", bias=bias, seed=size[0])


def test_model_shape_groups_4() -> None:
    """The FeatureAlign configuration: 256->256, 4 groups, 3x3, padding 1, no bias (a P6-sized map)."""
    _compare(1, 256, 256, (9, 11), (3, 3), 4, "fractional", bias=False)


@pytest.mark.parametrize("stride,padding,dilation", [(2, 1, 1), (2, 0, 1), (1, 2, 2), (3, 1, 2)])
def test_stride_padding_dilation(stride: int, padding: int, dilation: int) -> None:
    _compare(2, 8, 4, (12, 15), (3, 3), 2, "fractional", bias=True, stride=stride, padding=padding,
             dilation=dilation)


def test_rectangular_kernel_mask_and_weight_groups() -> None:
    _compare(2, 8, 6, (10, 9), (2, 3), 2, "fractional", bias=True, use_mask=True, weight_groups=2)


def test_integer_offsets_on_pixels_are_exact() -> None:
    """Zero offsets with padding 1 equal a plain conv (the zero-initialised FeatureAlign at step 0)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 8, 6, 7, generator=gen)
    weight = torch.randn(5, 8, 3, 3, generator=gen)
    out = deform_conv2d(x, torch.zeros(1, 2 * 2 * 9, 6, 7), weight, padding=1)
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, weight, padding=1), rtol=0, atol=TOL)


def test_float64_matches_torchvision_tightly() -> None:
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    offset = torch.randn(2, 18, 5, 6, dtype=torch.float64) * 2
    weight = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    ours = deform_conv2d(x, offset, weight, padding=1)
    ref = torchvision.ops.deform_conv2d(x, offset, weight, padding=(1, 1))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


def test_bad_offset_shape_is_reported() -> None:
    x = torch.randn(1, 8, 5, 5)
    weight = torch.randn(4, 8, 3, 3)
    with pytest.raises(ValueError, match="offset"):
        deform_conv2d(x, torch.randn(1, 17, 5, 5), weight, padding=1)
    with pytest.raises(ValueError, match="offset"):
        deform_conv2d(x, torch.randn(1, 18, 4, 5), weight, padding=1)
    with pytest.raises(ValueError, match="divisible"):
        deform_conv2d(torch.randn(1, 6, 5, 5), torch.randn(1, 18 * 4, 5, 5), torch.randn(4, 6, 3, 3), padding=1)


def test_module_forward_backward_and_state_dict() -> None:
    torch.manual_seed(0)
    module = DeformConv2d(8, 6, kernel_size=3, padding=1, offset_groups=4, bias=True)
    assert set(module.state_dict()) == {"weight", "bias"}
    assert module.weight.shape == (6, 8, 3, 3)
    x = torch.randn(2, 8, 7, 5, requires_grad=True)
    offset = torch.randn(2, 72, 7, 5, requires_grad=True)
    out = module(x, offset)
    ref = torchvision.ops.deform_conv2d(x, offset, module.weight, module.bias, padding=(1, 1))
    torch.testing.assert_close(out, ref, rtol=0, atol=TOL)
    out.square().sum().backward()
    assert module.weight.grad is not None and module.bias.grad is not None
    assert x.grad is not None and offset.grad is not None and offset.grad.abs().sum() > 0
    assert DeformConv2d(8, 6, 3, padding=1, offset_groups=2, bias=False).bias is None
    with pytest.raises(ValueError, match="offset"):
        module(x, offset[:, :36])


def test_tracing_dispatches_to_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under tracing / export the op must be torchvision's (it maps to ONNX DeformConv)."""
    calls = []
    original = torchvision.ops.deform_conv2d

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torchvision.ops, "deform_conv2d", spy)
    x, offset, weight = torch.randn(1, 4, 5, 5), torch.randn(1, 18, 5, 5), torch.randn(2, 4, 3, 3)
    deform_conv2d(x, offset, weight, padding=1)
    assert calls == []
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    deform_conv2d(x, offset, weight, padding=1)
    assert calls == [1]


def test_onnx_export_maps_to_deform_conv_and_matches() -> None:
    """The dynamo exporter (opset 19) emits ONNX DeformConv; onnxruntime agrees with PyTorch."""
    import onnxruntime as ort  # a dev dependency: the test must not silently skip

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.offset = torch.nn.Conv2d(8, 2 * 2 * 9, 3, padding=1)
            self.dcn = DeformConv2d(8, 6, 3, padding=1, offset_groups=2, bias=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.dcn(x, self.offset(x))

    torch.manual_seed(0)
    model = Tiny().eval()
    torch.nn.init.normal_(model.offset.weight, std=0.5)  # offsets of about a pixel
    x = torch.randn(1, 8, 12, 10)
    program = torch.onnx.export(model, (x,), dynamo=True, opset_version=19, verbose=False)
    proto = program.model_proto
    assert "DeformConv" in [node.op_type for node in proto.graph.node]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.from_numpy(got), expected.contiguous(), rtol=0, atol=TOL)


def test_channels_last_and_non_contiguous_inputs() -> None:
    """A channels-last model feeds channels-last input and offsets; the result must not change."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 9, 10, generator=gen)
    offset = torch.randn(2, 36, 9, 10, generator=gen) * 2
    weight = torch.randn(6, 8, 3, 3, generator=gen)
    mask = torch.rand(2, 18, 9, 10, generator=gen)
    ref = torchvision.ops.deform_conv2d(x, offset, weight, padding=(1, 1), mask=mask)
    cl = torch.channels_last
    ours = deform_conv2d(x.contiguous(memory_format=cl), offset.contiguous(memory_format=cl), weight,
                         padding=1, mask=mask.contiguous(memory_format=cl))
    torch.testing.assert_close(ours, ref, rtol=0, atol=TOL)
    wide = torch.randn(2, 8, 9, 20, generator=gen)[..., ::2]  # a strided view
    torch.testing.assert_close(deform_conv2d(wide, offset, weight, padding=1),
                               torchvision.ops.deform_conv2d(wide.contiguous(), offset, weight, padding=(1, 1)),
                               rtol=0, atol=TOL)


@pytest.mark.parametrize("block_bytes", [1, 3000])
def test_row_blocks_give_the_same_result(monkeypatch: pytest.MonkeyPatch, block_bytes: int) -> None:
    """Large maps are gathered and convolved in blocks of output rows: force 1 and a few rows per block."""
    from sipmask.ops import deform_conv as module

    monkeypatch.setattr(module, "_BLOCK_BYTES", block_bytes)
    _compare(2, 8, 5, (11, 7), (3, 3), 2, "large", bias=True, seed=5)
    _compare(2, 8, 5, (11, 7), (3, 3), 2, "fractional", bias=False, stride=2, seed=6)
    with torch.no_grad():
        x, offset, weight = torch.randn(2, 8, 10, 6), torch.randn(2, 36, 10, 6), torch.randn(4, 8, 3, 3)
        torch.testing.assert_close(deform_conv2d(x, offset, weight, padding=1),
                                   torchvision.ops.deform_conv2d(x, offset, weight, padding=(1, 1)),
                                   rtol=0, atol=TOL)


def test_output_memory_format_follows_the_input() -> None:
    x, offset, weight = torch.randn(1, 8, 6, 7), torch.randn(1, 18, 6, 7), torch.randn(4, 8, 3, 3)
    assert deform_conv2d(x, offset, weight, padding=1).is_contiguous()
    out = deform_conv2d(x.contiguous(memory_format=torch.channels_last), offset, weight, padding=1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert deform_conv2d(x, offset, weight, padding=1).view(1, 4, -1).shape == (1, 4, 42)


@pytest.mark.parametrize("private_op", ["missing", "failing"])
def test_public_gather_fallback_matches_torchvision(monkeypatch: pytest.MonkeyPatch, private_op: str) -> None:
    """Without the private out= embedding_bag op (absent, or rejecting the call), the public one gives the same."""
    from sipmask.ops import deform_conv as module

    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("aten::_embedding_bag_forward_only: signature changed")

    monkeypatch.setattr(module, "_GATHER_OUT", None if private_op == "missing" else failing)
    monkeypatch.setattr(module, "_OUT_MIN", 0)  # every inference call takes the reused-buffer path
    monkeypatch.setattr(module, "_BLOCK_BYTES", 4000)  # several blocks share that buffer
    gen = torch.Generator().manual_seed(11)
    x, offset = torch.randn(2, 8, 11, 9, generator=gen), torch.randn(2, 2 * 2 * 9, 11, 9, generator=gen) * 2
    weight, bias = torch.randn(5, 8, 3, 3, generator=gen), torch.randn(5, generator=gen)
    mask = torch.rand(2, 2 * 9, 11, 9, generator=gen)
    expected = torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask)
    with torch.inference_mode():
        got = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=TOL)
    if private_op == "failing":
        assert len(calls) > 2  # every block of both images tried the private op, then fell back
    monkeypatch.setattr(module, "_GATHER_OUT", module._private_gather_op())  # the normal path, same numbers
    with torch.inference_mode():
        torch.testing.assert_close(deform_conv2d(x, offset, weight, bias, padding=1, mask=mask), got, rtol=0, atol=1e-6)


def test_calls_leave_the_thread_count_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """No process-wide state per call: torch.set_num_threads is never called (other threads share it)."""
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    x, offset, weight = torch.randn(1, 16, 20, 20), torch.randn(1, 72, 20, 20), torch.randn(8, 16, 3, 3)
    with torch.inference_mode():
        deform_conv2d(x, offset, weight, padding=1)
    deform_conv2d(x.requires_grad_(), offset, weight, padding=1).sum().backward()
    assert calls == []


def test_jit_trace_records_torchvision_op() -> None:
    """torch.jit.trace of a DeformConv2d holds torchvision's op (not the gather path) and replays it."""
    torch.manual_seed(0)
    module = DeformConv2d(4, 6, 3, padding=1, offset_groups=2).eval()
    x, offset = torch.randn(1, 4, 7, 8), torch.randn(1, 36, 7, 8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter (deprecation, shape checks become constants)
        traced = torch.jit.trace(module, (x, offset))
        assert "torchvision::deform_conv2d" in str(traced.graph)
        assert "embedding_bag" not in str(traced.graph)
        x2, offset2 = torch.randn(1, 4, 7, 8), torch.randn(1, 36, 7, 8)
        torch.testing.assert_close(traced(x2, offset2), module(x2, offset2), rtol=0, atol=TOL)


def test_torch_compile_runs_torchvision_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torch.compile the gather path (lru caches, private op) is never traced: torchvision's op is."""
    from sipmask.ops import deform_conv as module

    def refuse(*args, **kwargs):
        raise AssertionError("the CPU gather path was traced by torch.compile")

    monkeypatch.setattr(module, "_deform_conv2d_cpu", refuse)
    gen = torch.Generator().manual_seed(2)
    x, offset, weight = torch.randn(1, 4, 6, 7, generator=gen), torch.randn(1, 18, 6, 7, generator=gen), \
        torch.randn(3, 4, 3, 3, generator=gen)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(lambda a, o, w: deform_conv2d(a, o, w, padding=1), backend="eager")
        with torch.no_grad():
            got = compiled(x, offset, weight)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(got, torchvision.ops.deform_conv2d(x, offset, weight, padding=(1, 1)), rtol=0, atol=TOL)


def test_layer_workspace_is_reused_per_call_and_safe_across_threads() -> None:
    """A layer's Workspace: results equal torchvision's, with buffers reused, in two threads at once,
    and a copied layer starts with an empty workspace of its own."""
    import copy
    import pickle
    import threading

    from sipmask.ops import deform_conv as module

    torch.manual_seed(4)
    layer = DeformConv2d(64, 32, 3, padding=1, offset_groups=1).eval()
    inputs = [(torch.randn(1, 64, 40, 36), torch.randn(1, 18, 40, 36) * 2) for _ in range(2)]
    expected = [torchvision.ops.deform_conv2d(x, o, layer.weight.detach(), layer.bias.detach(), padding=(1, 1))
                for x, o in inputs]
    with torch.inference_mode():
        first = layer(*inputs[0])
    held = list(layer.workspace._free)
    assert held and all(b.numel() > 0 for b in held)  # the call's buffers were put back for the next one
    with torch.inference_mode():
        layer(*inputs[0])
    assert {b.data_ptr() for b in layer.workspace._free} == {b.data_ptr() for b in held}  # reused, not new
    torch.testing.assert_close(first, expected[0], rtol=0, atol=TOL)
    got: dict[int, list] = {0: [], 1: []}
    start = threading.Barrier(2)

    def worker(slot: int) -> None:
        start.wait()
        with torch.inference_mode():
            for _ in range(4):
                got[slot].append(layer(*inputs[slot]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for slot in (0, 1):
        assert len(got[slot]) == 4
        for out in got[slot]:
            torch.testing.assert_close(out, expected[slot], rtol=0, atol=TOL)
    assert len(layer.workspace._free) <= module._WORKSPACE_BUFFERS
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone.workspace is not layer.workspace and clone.workspace._free == []
        with torch.inference_mode():
            torch.testing.assert_close(clone(*inputs[1]), expected[1], rtol=0, atol=TOL)


def test_workspace_serves_inference_mode_and_no_grad_alike() -> None:
    """Buffers made under torch.inference_mode are reused under torch.no_grad (and back)."""
    torch.manual_seed(5)
    layer = DeformConv2d(64, 16, 3, padding=1).eval()
    x, offset = torch.randn(1, 64, 40, 36), torch.randn(1, 18, 40, 36)
    expected = torchvision.ops.deform_conv2d(x, offset, layer.weight.detach(), layer.bias.detach(), padding=(1, 1))
    for context in (torch.inference_mode, torch.no_grad, torch.inference_mode):
        with context():
            torch.testing.assert_close(layer(x, offset), expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("needs", ["both", "rows", "weight"])
def test_sample_gather_backward_equals_embedding_bags(needs: str) -> None:
    """The gather's own backward (sorted transpose) gives embedding_bag's gradients, rows hit many times or never."""
    from sipmask.ops.deform_conv import _SampleGather

    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(50, 8, generator=gen)
    index = torch.randint(0, 40, (300, 4), generator=gen, dtype=torch.int32)  # rows 40-49 never read
    weight = torch.rand(300, 4, generator=gen)
    grad = torch.randn(300, 8, generator=gen)
    grads = []
    for fn in (_SampleGather.apply,
               lambda r, i, w: torch.nn.functional.embedding_bag(i, r, mode="sum", per_sample_weights=w)):
        r = rows.clone().requires_grad_(needs in ("both", "rows"))
        w = weight.clone().requires_grad_(needs in ("both", "weight"))
        leaves = [t for t in (r, w) if t.requires_grad]
        grads.append(torch.autograd.grad(fn(r, index, w), leaves, grad))
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    if needs != "weight":
        assert torch.equal(grads[0][0][40:], torch.zeros(10, 8))
