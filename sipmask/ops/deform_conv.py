"""Deformable convolution (DCN v1/v2): a fast pure-PyTorch CPU path equal to torchvision's kernel.

`torchvision.ops.deform_conv2d` is used on CUDA and whenever the call is being compiled, traced or
exported (torch.compile, torch.jit.trace, the dynamo ONNX exporter, which maps it to ONNX
`DeformConv`, opset 19+). On CPU, torchvision's kernel
costs about 10x a plain conv of the same shape; this module computes the same function as

1. a fused bilinear gather: `F.embedding_bag(mode="sum")` reads the 4 corner rows (channels-last,
   `C / offset_groups` contiguous floats each) of every (output pixel, kernel tap, offset group)
   and sums them with their bilinear weights as `per_sample_weights`, writing the sampled values
   straight into a channels-last "tap image" [B, C, Ho*kh, Wo*kw] whose (kh x kw) blocks are the
   deformed receptive fields;
2. a plain `F.conv2d(tap_image, weight, stride=(kh, kw))`, which oneDNN runs about as fast as the
   ordinary 3x3 conv of the same shape.

Large maps go through both steps a block of output rows at a time (bounded temporary memory).
A call changes no process-wide state (thread count, allocator settings); the per-shape index
constants are cached (`_tap_grid`), and the inference path gathers every block into one buffer with
the private out= form of embedding_bag, or with the public op where that is missing. A layer owns a
`Workspace`: its input table and gather buffer are reused across calls instead of being mapped and
page-faulted in afresh each time (thread-safe: a call holds its buffers until it returns).
Both are differentiable (w.r.t. input, offset, mask, weight, bias) with native backward kernels
(forward + backward at 68x68, 256 channels, one thread: about 2.5x a plain conv's, torchvision 13x).
Bilinear sampling uses zero padding and `floor`, exactly as torchvision's kernel: a sample point
in (-1, 0) or (H-1, H) blends the border pixel with zeros, a point at or beyond -1 / H reads 0, and
the offset gradient at an exactly integer point is the one-sided (right) difference.
"""
from __future__ import annotations

import functools
import math
import threading

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

__all__ = ["DeformConv2d", "Workspace", "deform_conv2d"]

#: dtypes the pure-PyTorch path handles (embedding_bag + oneDNN conv); others go to torchvision.
_NATIVE_DTYPES = (torch.float32, torch.float64)
#: Reduced-precision inputs (CPU bfloat16 autocast) that the pure-PyTorch path takes in float32:
#: sample positions and bilinear weights need float32 (bfloat16 spaces 2 px apart at 256), and
#: torchvision's CPU kernel has no bfloat16. The strided conv then runs in autocast's dtype.
_UPCAST_DTYPES = (torch.bfloat16, torch.float16)
#: Tap-image bytes gathered and convolved per block of output rows: bounds the temporary memory
#: (a 100x168 map's whole tap image is 155 MiB) while keeping blocks few and convs large.
_BLOCK_BYTES = 16 << 20
#: Gathered values per block from which the inference path reuses one buffer (below, the
#: out= call's fixed cost outweighs what a fresh small allocation costs).
_OUT_MIN = 1 << 18
#: Buffers a `Workspace` keeps: a call uses two (input table, gather buffer), so up to 4 threads
#: calling one layer at once reuse memory (more still work, with fresh buffers).
_WORKSPACE_BUFFERS = 8
#: Zero rows/columns around the input table: the low corner is clamped to [-2, size], so both
#: corners of any sample lie in [-2, size + 1] and need no per-corner bounds check.
_BORDER = 2


def _is_compiling() -> bool:
    """torch.compile (dynamo) is tracing this call (torch.compiler.is_compiling from torch 2.3 on)."""
    check = getattr(torch.compiler, "is_compiling", None)
    if check is None:  # torch 2.2
        from torch import _dynamo

        check = _dynamo.is_compiling
    return check()


def _is_exporting() -> bool:
    """torch.export is tracing this call (torch.compiler.is_exporting from torch 2.3 on)."""
    check = getattr(torch.compiler, "is_exporting", None)
    return check is not None and check()


def _use_torchvision(input: Tensor) -> bool:
    """True where torchvision's own kernel must run: CUDA, other dtypes, and whenever the call is being
    compiled (torch.compile), scripted, traced or exported, so that the graph holds the one op that
    compiles and maps to ONNX `DeformConv` (and the per-shape caches below are never traced)."""
    if input.device.type != "cpu" or input.dtype not in _NATIVE_DTYPES + _UPCAST_DTYPES:
        return True
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True
    return _is_compiling() or _is_exporting()


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: Tensor | None = None,
    *,
    workspace: "Workspace | None" = None,
) -> Tensor:
    """Deformable conv with the semantics of `torchvision.ops.deform_conv2d`.

    Args:
        input: [B, C, H, W].
        offset: [B, 2*G*kh*kw, Ho, Wo]; channel g*2*kh*kw + 2k is the y offset and + 1 the x offset
            of tap k = row*kw + col for offset group g (C/G input channels per group).
        weight: [O, C/groups, kh, kw] (conv groups are inferred as C // weight.shape[1]).
        bias: [O] or None.
        mask: [B, G*kh*kw, Ho, Wo] modulation (DCN v2) or None (DCN v1).
        workspace: scratch memory reused across calls by the CPU inference path (a layer owns one,
            see `Workspace`); None: fresh memory each call.
    Returns:
        [B, O, Ho, Wo], channels-last in memory when the input is (like F.conv2d). A bfloat16 / float16
        input on the CPU is sampled in float32 (see _UPCAST_DTYPES); the result is float32, or
        autocast's dtype when autograd records the call under autocast.
    """
    if _use_torchvision(input):
        return torchvision.ops.deform_conv2d(
            input, offset, weight, bias, stride=_pair(stride), padding=_pair(padding),
            dilation=_pair(dilation), mask=mask,
        )
    if input.dtype in _UPCAST_DTYPES:
        input, offset, weight = input.float(), offset.float(), weight.float()
        bias = bias.float() if bias is not None else None
        mask = mask.float() if mask is not None else None
    return _deform_conv2d_cpu(input, offset, weight, bias, _pair(stride), _pair(padding), _pair(dilation), mask,
                              workspace)


def _deform_conv2d_cpu(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    mask: Tensor | None,
    workspace: "Workspace | None" = None,
) -> Tensor:
    """The embedding_bag gather + strided conv path; argument contract as `deform_conv2d`."""
    batch, channels, height, width = input.shape
    out_channels, _, kh, kw = weight.shape
    taps = kh * kw
    if channels % weight.shape[1] != 0:
        raise ValueError(f"input channels {channels} are not a multiple of weight.shape[1]={weight.shape[1]}")
    if offset.shape[1] % (2 * taps) != 0 or offset.shape[1] == 0:
        raise ValueError(f"offset has {offset.shape[1]} channels, expected a positive multiple of 2*kh*kw={2 * taps}")
    groups = offset.shape[1] // (2 * taps)
    if channels % groups != 0:
        raise ValueError(f"input channels {channels} are not divisible by the {groups} offset groups")
    out_h = (height + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if offset.shape != (batch, 2 * groups * taps, out_h, out_w):
        raise ValueError(f"offset shape {tuple(offset.shape)} does not fit the output size {(out_h, out_w)}")
    if mask is not None and mask.shape != (batch, groups * taps, out_h, out_w):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not fit {(batch, groups * taps, out_h, out_w)}")
    if input.numel() == 0 or out_h <= 0 or out_w <= 0:
        return torchvision.ops.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)

    # Channels-last table with a zero border: row (b, y+2, x+2, g) holds the C/G channels of group g
    # at pixel (y, x); corners outside the image land on the zero border, which gives torchvision's
    # zero padding (value and gradients) without any masking.
    table_shape = (batch, height + 2 * _BORDER, width + 2 * _BORDER, channels)
    inference = not (torch.is_grad_enabled() and (input.requires_grad or offset.requires_grad
                                                  or (mask is not None and mask.requires_grad)))
    taken: list[Tensor] = []  # flat workspace buffers this call holds (given back at its end)
    if workspace is not None and inference:
        taken.append(workspace.take(math.prod(table_shape), input.dtype, input.device))
        padded = taken[-1][: math.prod(table_shape)].view(table_shape)
    else:
        padded = input.new_empty(table_shape)
    padded[:, :_BORDER].zero_(), padded[:, -_BORDER:].zero_()  # only the border is zero-filled
    padded[:, _BORDER:-_BORDER, :_BORDER].zero_(), padded[:, _BORDER:-_BORDER, -_BORDER:].zero_()
    padded[:, _BORDER:-_BORDER, _BORDER:-_BORDER] = input.permute(0, 2, 3, 1)
    rows = padded.view(-1, channels // groups)  # [B*(H+4)*(W+4)*G, C/G]
    index, sample_weight = _bilinear_taps(offset, mask, (height, width), (kh, kw), stride, padding, dilation)
    bags_per_row = kh * out_w * kw * groups  # bags (C/G sampled values each) per output row
    index = index.view(batch, out_h, bags_per_row, 4)
    sample_weight = sample_weight.view(batch, out_h, bags_per_row, 4)
    # Output rows in blocks (see _BLOCK_BYTES): gather a block's tap image, convolve it, next.
    tap_image_bytes = out_h * bags_per_row * (channels // groups) * input.element_size()  # per image
    rows_per_block = math.ceil(out_h / math.ceil(tap_image_bytes / _BLOCK_BYTES))  # even: no small last block
    conv_groups = channels // weight.shape[1]
    # oneDNN wants the weight in the tap image's (channels-last) layout: convert once, not per block
    # (a no-op for DeformConv2d, which stores its weight that way).
    weight = weight.contiguous(memory_format=torch.channels_last)
    channels_last = input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous()
    if torch.is_grad_enabled() and (rows.requires_grad or sample_weight.requires_grad):
        images = []
        for b in range(batch):
            blocks = []
            for top in range(0, out_h, rows_per_block):
                bottom = min(out_h, top + rows_per_block)
                sampled = _SampleGather.apply(rows, index[b, top:bottom].reshape(-1, 4),
                                              sample_weight[b, top:bottom].reshape(-1, 4))
                tap_image = sampled.view(1, (bottom - top) * kh, out_w * kw, channels).permute(0, 3, 1, 2)
                blocks.append(F.conv2d(tap_image, weight, bias, stride=(kh, kw), groups=conv_groups))
            images.append(blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=2))
        out = images[0] if batch == 1 else torch.cat(images, dim=0)  # channels-last, as oneDNN wrote it
        # Same memory format as F.conv2d would give: channels-last only for a channels-last input.
        return out if channels_last else out.contiguous()

    # Without autograd: one gather buffer serves all blocks (one allocation per call), and each
    # block's conv result is copied straight into the output (no cat, no final copy).
    block_rows = min(rows_per_block, out_h) * bags_per_row
    # (small blocks: the plain call is faster than the out= variant and its memory is cheap)
    buffer = None
    if block_rows * rows.shape[1] >= _OUT_MIN:
        if workspace is not None:
            taken.append(workspace.take(block_rows * rows.shape[1], rows.dtype, rows.device))
            buffer = taken[-1][: block_rows * rows.shape[1]].view(block_rows, rows.shape[1])
        else:
            buffer = rows.new_empty(block_rows, rows.shape[1])
    out = torch.empty(batch, out_channels, out_h, out_w, dtype=input.dtype, device=input.device,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for b in range(batch):
        for top in range(0, out_h, rows_per_block):
            bottom = min(out_h, top + rows_per_block)
            block_index = index[b, top:bottom].reshape(-1, 4)
            block_weight = sample_weight[b, top:bottom].reshape(-1, 4)
            if buffer is None:
                sampled = F.embedding_bag(block_index, rows, mode="sum", per_sample_weights=block_weight)
            else:
                sampled = _gather_into(buffer[: block_index.shape[0]], rows, block_index, block_weight)
            tap_image = sampled.view(1, (bottom - top) * kh, out_w * kw, channels).permute(0, 3, 1, 2)
            out[b:b + 1, :, top:bottom] = F.conv2d(tap_image, weight, bias, stride=(kh, kw), groups=conv_groups)
    for flat in taken:
        workspace.give(flat)
    return out


class _SampleGather(torch.autograd.Function):
    """`F.embedding_bag(index, rows, mode="sum", per_sample_weights=weight)` with a faster backward.

    rows: [R, D] table; index: int [N, 4] rows of each bag; weight: [N, 4] -> [N, D]. PyTorch's own
    backward for `rows` (`_embedding_bag_dense_backward`) was 13% of a `tiny` training step on the
    CPU. The gradient of `rows` is the transposed gather, which is itself a gather: the entries
    sorted by their table row make one bag per row, summed by a forward embedding_bag (the same sums,
    equal to PyTorch's up to the order of additions within a row: bitwise equal where measured; about
    3x faster at a P3 map of 32x32 with 4 offset groups). The gradient of `weight` is PyTorch's own (`per_sample_weights` backward, cheap).
    """

    @staticmethod
    def forward(ctx, rows: Tensor, index: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(rows, index, weight)
        return F.embedding_bag(index, rows, mode="sum", per_sample_weights=weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        rows, index, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_rows = grad_weight = None
        if ctx.needs_input_grad[0]:
            flat = index.reshape(-1)
            order = flat.argsort()  # entries grouped by table row
            counts = torch.bincount(flat, minlength=rows.shape[0])
            starts = counts.cumsum(0) - counts  # each row's first entry in `order`
            grad_rows = F.embedding_bag(order // index.shape[1], grad, starts, mode="sum",
                                        per_sample_weights=weight.reshape(-1)[order])
        if ctx.needs_input_grad[2]:
            with torch.enable_grad():
                leaf = weight.detach().requires_grad_()
                sampled = F.embedding_bag(index, rows.detach(), mode="sum", per_sample_weights=leaf)
                (grad_weight,) = torch.autograd.grad(sampled, leaf, grad)
        return grad_rows, None, grad_weight


class Workspace:
    """Scratch memory of one deformable layer, reused by its CPU inference calls (no autograd).

    Each call gathers its tap image into a buffer of up to `_BLOCK_BYTES`; allocating it afresh makes
    the system map and page-fault those megabytes in again on every call. A layer that owns a
    Workspace takes a buffer out for the call and puts it back after: calls from several threads at
    once each hold their own buffer (never shared while in use), and at most `_WORKSPACE_BUFFERS` are
    kept. Copies (deepcopy, pickling) start empty; nothing of it is in a state_dict.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[Tensor] = []

    def take(self, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A flat buffer of at least `numel` elements, owned by the caller until `give`."""
        with self._lock:
            fitting = [i for i, b in enumerate(self._free) if b.dtype == dtype and b.device == device
                       and b.numel() >= numel]
            if fitting:  # the smallest that fits: the larger ones stay for the larger needs
                return self._free.pop(min(fitting, key=lambda i: self._free[i].numel()))
        with torch.inference_mode(False):  # a normal tensor: writable in and out of inference mode
            return torch.empty(numel, dtype=dtype, device=device)

    def give(self, buffer: Tensor) -> None:
        """Return a flat buffer from `take` for later calls; the smallest is dropped when too many are kept."""
        with self._lock:
            self._free.append(buffer)
            if len(self._free) > _WORKSPACE_BUFFERS:
                self._free.remove(min(self._free, key=lambda t: t.numel()))

    def __deepcopy__(self, memo: dict) -> "Workspace":
        return Workspace()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


@functools.lru_cache(maxsize=64)
def _tap_grid(
    batch: int, groups: int, size: tuple[int, int], out_size: tuple[int, int], kernel: tuple[int, int],
    stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
    dtype: torch.dtype, index_dtype: torch.dtype, device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-shape constants of `_bilinear_taps`, in the tap image's raster order [B, Ho, kh, Wo*kw*G].

    Returns:
        base: [2, 1, Ho, kh, Wo*kw*G] undeformed sample coordinates (y, x);
        shift: [B, 1, 1, Wo*kw*G] table row of pixel (0, 0) of image b, group g (see `_BORDER`);
        corners: [4] row steps from the (y0, x0) corner to (y0, x0) (y0, x1) (y1, x0) (y1, x1).
    """
    (height, width), (out_h, out_w), (kh, kw) = size, out_size, kernel
    with torch.inference_mode(False), torch.no_grad():  # cached: must be usable with autograd later
        def arange(n: int, dt: torch.dtype = dtype) -> Tensor:
            return torch.arange(n, dtype=dt, device=device)

        inner = out_w * kw * groups
        base_y = (arange(out_h) * stride[0] - padding[0]).view(out_h, 1, 1) + (arange(kh) * dilation[0]).view(kh, 1)
        base_x = (arange(out_w) * stride[1] - padding[1]).view(out_w, 1, 1) + (arange(kw) * dilation[1]).view(kw, 1)
        base = torch.stack((base_y.expand(out_h, kh, inner),
                            base_x.expand(out_w, kw, groups).reshape(1, 1, inner).expand(out_h, kh, inner)))
        row_step = (width + 2 * _BORDER) * groups  # table rows per image row
        image_rows = (height + 2 * _BORDER) * row_step
        origin = (_BORDER * row_step + _BORDER * groups)
        shift = (arange(batch, index_dtype) * image_rows + origin).view(batch, 1, 1, 1) \
            + arange(groups, index_dtype).repeat(out_w * kw)
        corners = torch.tensor([0, groups, row_step, row_step + groups], dtype=index_dtype, device=device)
    return base.unsqueeze(1).contiguous(), shift.contiguous(), corners


@functools.lru_cache(maxsize=32)
def _bag_starts(count: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Offsets [count] of bags of 4 in a flat index: 0, 4, 8, ... (cached, autograd-neutral)."""
    with torch.inference_mode(False):
        return torch.arange(0, 4 * count, 4, dtype=dtype, device=device)


def _private_gather_op():
    """`aten::_embedding_bag_forward_only.out`, the out= form of embedding_bag's inference kernel, or None.

    A private op (no stability promise): where a torch build lacks it or it rejects a call,
    `_gather_into` falls back to the public `F.embedding_bag` into a fresh tensor (same values).
    """
    try:
        return torch.ops.aten._embedding_bag_forward_only.out
    except (AttributeError, RuntimeError):
        return None


#: The private out= gather (see `_private_gather_op`); None: every gather takes the public path.
_GATHER_OUT = _private_gather_op()


def _gather_into(out: Tensor, rows: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """`F.embedding_bag(index, rows, mode="sum", per_sample_weights=weight)`, written into `out` where it can.

    No autograd. Args: out [N, C/G], rows [R, C/G], index int [N, 4], weight [N, 4]. Returns [N, C/G]:
    `out` itself, or a fresh tensor where the private out= op is missing or fails.
    """
    if _GATHER_OUT is not None:
        try:
            _GATHER_OUT(rows, index.view(-1), _bag_starts(index.shape[0], index.dtype, index.device), False, 0,
                        False, weight.view(-1), False, -1, out0=out, out1=index.new_empty(0),
                        out2=index.new_empty(0), out3=index.new_empty(0))
            return out
        except (RuntimeError, TypeError):  # a changed private signature or kernel: the public op below
            pass
    return F.embedding_bag(index, rows, mode="sum", per_sample_weights=weight)


def _bilinear_taps(
    offset: Tensor,
    mask: Tensor | None,
    size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Corner rows and bilinear weights of every sample, one bag of 4 per (pixel, tap, group).

    Args:
        offset: [B, 2*G*kh*kw, Ho, Wo]; mask: [B, G*kh*kw, Ho, Wo] or None.
    Returns:
        index: int [B*Ho*kh*Wo*kw*G, 4], rows of the zero-bordered channels-last input table
            [B*(H+2*_BORDER)*(W+2*_BORDER)*G, C/G], corners (y0,x0) (y0,x1) (y1,x0) (y1,x1);
        weight: [B*Ho*kh*Wo*kw*G, 4] bilinear weights (differentiable w.r.t. offset and mask).
    """
    batch, _, out_h, out_w = offset.shape
    height, width = size
    kh, kw = kernel
    groups = offset.shape[1] // (2 * kh * kw)
    table_rows = batch * (height + 2 * _BORDER) * (width + 2 * _BORDER) * groups
    index_dtype = torch.int32 if table_rows < 2**31 else torch.int64
    base, shift, corners = _tap_grid(batch, groups, size, (out_h, out_w), kernel, stride, padding, dilation,
                                     offset.dtype, index_dtype, offset.device)
    inner = out_w * kw * groups
    # [B, G, kh, kw, 2, Ho, Wo] -> [2(y, x), B, Ho, kh, Wo*kw*G]: the tap image's raster order, so
    # that all the arithmetic below runs on contiguous tensors with long inner loops.
    off = offset.view(batch, groups, kh, kw, 2, out_h, out_w).permute(4, 0, 5, 2, 6, 3, 1)
    differentiable = torch.is_grad_enabled() and (offset.requires_grad or (mask is not None and mask.requires_grad))
    if differentiable:
        coord = off.reshape(2, batch, out_h, kh, inner) + base
        low = coord.detach().floor()
        frac = coord - low  # carries the offset gradient (floor is piecewise constant)
    else:  # the same values, in place: fewer fresh buffers (page faults are dear on VMs)
        coord = off.reshape(2, batch, out_h, kh, inner)
        shares_memory = coord.untyped_storage().data_ptr() == offset.untyped_storage().data_ptr()
        coord = coord + base if shares_memory else coord.add_(base)  # never write into the caller's offset
        low = coord.floor()
        frac = coord.sub_(low)
    # Beyond the image both corners read the zero border; clamping the low corner to [-2, size]
    # keeps them there (rows -2, -1 or size, size+1) and the int32 arithmetic in range.
    low_y = low[0].clamp_(-_BORDER, height).to(index_dtype)
    low_x = low[1].clamp_(-_BORDER, width).to(index_dtype)
    row_step = (width + 2 * _BORDER) * groups
    first = low_y.mul_(row_step).add_(low_x.mul_(groups)).add_(shift)  # table row of corner (y0, x0)
    index = (first.view(-1, 1) + corners).contiguous()  # [N, 4]

    frac_y, frac_x = frac[0].reshape(-1), frac[1].reshape(-1)
    near_y, near_x = 1 - frac_y, 1 - frac_x
    if mask is not None:
        modulation = mask.view(batch, groups, kh, kw, out_h, out_w).permute(0, 4, 2, 5, 3, 1).reshape(-1)
        near_y, frac_y = near_y * modulation, frac_y * modulation
    products = ((near_y, near_x), (near_y, frac_x), (frac_y, near_x), (frac_y, frac_x))
    if differentiable:
        weight = torch.stack([a * b for a, b in products], dim=1)  # [N, 4], differentiable
    else:
        weight = offset.new_empty(index.shape)
        for k, (a, b) in enumerate(products):  # written in place: no [4, N] -> [N, 4] transpose
            torch.mul(a, b, out=weight[:, k])
    return index, weight


class DeformConv2d(nn.Module):
    """Deformable conv layer holding `weight` [O, C, kh, kw] and optional `bias` [O]; `module(x, offset)`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        padding: int | tuple[int, int] = 0,
        offset_groups: int = 1,
        bias: bool = True,
        stride: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
    ) -> None:
        super().__init__()
        if in_channels % offset_groups != 0:
            raise ValueError(f"in_channels {in_channels} not divisible by offset_groups {offset_groups}")
        kh, kw = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.offset_groups = offset_groups
        # [O, C, kh, kw] stored channels-last, the layout the CPU path's strided conv uses (saves a copy
        # per call; state_dict keys and shapes are the usual ones, loading keeps this layout).
        self.weight = nn.Parameter(torch.empty(out_channels, kh, kw, in_channels).permute(0, 3, 1, 2))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.workspace = Workspace()  # scratch memory of the CPU inference path
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default conv initialisation (callers re-initialise as their recipe says)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        """x [B, C, H, W], offset [B, 2*G*kh*kw, Ho, Wo] -> [B, O, Ho, Wo]."""
        expected = 2 * self.offset_groups * self.weight.shape[2] * self.weight.shape[3]
        if offset.shape[1] != expected:
            raise ValueError(f"offset has {offset.shape[1]} channels, expected {expected} "
                             f"(2 * {self.offset_groups} groups * kernel taps)")
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask,
                             workspace=self.workspace)

    def extra_repr(self) -> str:
        out_channels, in_channels, kh, kw = self.weight.shape
        return (f"{in_channels}, {out_channels}, kernel_size={(kh, kw)}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, offset_groups={self.offset_groups}, "
                f"bias={self.bias is not None}")
