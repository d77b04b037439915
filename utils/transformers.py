"""torch's and torchvision's transformer modules as the toolkit prunes them.

Their attention modules tie the width inside the attention (heads x head width) to the width of
the tokens they read: nn.MultiheadAttention asserts that the query's width is ``embed_dim`` and
splits the projections by it, torchvision's ``shifted_window_attention`` takes its head width
from the input's channels (``C // num_heads``, also in the 1/sqrt(head width) scale), MaxViT's
attention reshapes its output to the input's width. Remove a head, or a channel of the residual
stream, and the original forward computes something else or fails. So each has a *compact form*:
a subclass, same tensors and state_dict keys, whose forward reads both widths from its own
tensors (the per-head width, and so the scale, stays what it was). Compaction swaps a module's
class to its compact form when its tensors shrink; a checkpoint records the compact class's name
and ``utils.structure.apply_structure`` swaps it back on load. On unpruned weights a compact form
computes what the original does (tests/test_transformers.py checks it).

``ATTENTION_MODULES`` are traced as one operation (utils/tracing.py) and handled whole by the
dependency graph (pruners/graph/operations.py); ``DERIVED_WIDTHS`` says, per class, which integer
attributes hold a width and how each follows the module's tensors after compaction (a container's
``num_heads`` or ``hidden_dim``, PatchMerging's ``dim``).
"""
import contextlib
import math
from typing import Callable, Dict, Iterator, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torchvision.models import maxvit, swin_transformer, vision_transformer


# ---- compact forms ---------------------------------------------------------------------------

def attention_widths(heads: int, packed_rows: int, output_columns: int) -> Tuple[int, int]:
    """(query/key width, value width) per head of an attention module whose packed projection
    has ``packed_rows`` rows [q | k | v] (heads x query width, heads x key width, heads x value
    width) and whose output projection reads ``output_columns`` (heads x value width). Equal in
    an unpruned module; pruning the per-head width may cut them differently."""
    v_width = output_columns // heads
    qk_width = (packed_rows - heads * v_width) // (2 * heads)
    if heads * (2 * qk_width + v_width) != packed_rows or heads * v_width != output_columns:
        raise ValueError(f"{packed_rows} packed q, k, v rows and {output_columns} output columns "
                         f"do not split into {heads} heads")
    return qk_width, v_width


def scale_width(module: nn.Module) -> int:
    """The head width whose 1/sqrt the scores of Swin V1's attention are scaled by: torchvision
    reads it from the input (channels // heads), so compaction records the original one as
    ``head_dim`` (a file of heads pruned before it did has the original width in ``qkv``)."""
    recorded = module.__dict__.get("head_dim")
    if recorded is not None:
        return recorded
    return module.qkv.weight.shape[0] // 3 // module.num_heads


class CompactMultiheadAttention(nn.MultiheadAttention):
    """Self-attention with ``num_heads`` heads, reading and writing tokens of ``embed_dim``
    channels; the heads' query/key and value widths are read from the projections
    (``attention_widths``), and the 1/sqrt(width) scale from ``head_dim``, the original head
    width, which compaction never changes. Only what the dependency graph
    accepts is implemented: one tensor as query, key and value, packed projections, no bias_k /
    bias_v, no masks."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not (query is key is value) or key_padding_mask is not None or attn_mask is not None \
                or is_causal:
            raise NotImplementedError("a pruned nn.MultiheadAttention computes unmasked "
                                      "self-attention only (query is key is value)")
        x = query if self.batch_first else query.transpose(0, 1)          # (N, L, E)
        batch, length, _ = x.shape
        heads = self.num_heads
        qk_width, v_width = attention_widths(heads, self.in_proj_weight.shape[0],
                                             self.out_proj.weight.shape[1])
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = (t.reshape(batch, length, heads, -1).transpose(1, 2)
                   for t in qkv.split([heads * qk_width, heads * qk_width, heads * v_width], -1))
        scale = self.head_dim ** -0.5  # the original head width's (compaction keeps head_dim)
        if need_weights:
            weights = torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)
            out = F.dropout(weights, p=self.dropout, training=self.training) @ v
        else:  # torch's fused kernel, as nn.MultiheadAttention's own fast path uses
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, scale=scale)
        out = out.transpose(1, 2).reshape(batch, length, heads * v_width)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights


def _shift_mask(height: int, width: int, window: Tuple[int, int], shift: Tuple[int, int],
                device) -> torch.Tensor:
    """(windows, tokens, tokens): -100 between tokens of one window that came from different
    regions of the cyclically shifted map (Swin's mask: they were not neighbours), 0 otherwise."""
    region = torch.zeros(height, width, device=device)
    bounds = [((0, -w), (-w, -s), (-s, None)) for w, s in zip(window, shift)]
    for i, (h0, h1) in enumerate(bounds[0]):
        for j, (w0, w1) in enumerate(bounds[1]):
            region[h0:h1, w0:w1] = 3 * i + j
    region = region.view(height // window[0], window[0], width // window[1], window[1])
    region = region.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    differs = region.unsqueeze(1) != region.unsqueeze(2)
    return torch.zeros(differs.shape, device=device).masked_fill(differs, -100.0)


def _windowed_attention(module, x: torch.Tensor, position_bias: torch.Tensor,
                        logit_scale: Optional[torch.Tensor]) -> torch.Tensor:
    """torchvision's shifted_window_attention with the heads' widths read from ``qkv`` and
    ``proj`` (``attention_widths``) instead of from the input's channels, and V1's 1/sqrt(width)
    scale from the original head width (``scale_width``)."""
    batch, height, width, _ = x.shape
    window = tuple(module.window_size)
    heads = module.num_heads
    qk_width, v_width = attention_widths(heads, module.qkv.weight.shape[0], module.proj.weight.shape[1])
    qk_rows = heads * qk_width
    pad_h, pad_w = (-height) % window[0], (-width) % window[1]
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    full_h, full_w = height + pad_h, width + pad_w
    # no shift where the window covers the whole map, as in torchvision
    shift = tuple(0 if w >= size else s for w, s, size in zip(window, module.shift_size, (full_h, full_w)))
    shifted = sum(shift) > 0
    if shifted:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    rows, cols = full_h // window[0], full_w // window[1]
    tokens = window[0] * window[1]
    channels = x.shape[-1]
    windows = x.view(batch, rows, window[0], cols, window[1], channels).permute(0, 1, 3, 2, 4, 5)
    windows = windows.reshape(batch * rows * cols, tokens, channels)

    qkv_bias = module.qkv.bias
    if logit_scale is not None and qkv_bias is not None:  # V2 has no key bias
        qkv_bias = torch.cat([qkv_bias[:qk_rows], torch.zeros_like(qkv_bias[qk_rows:2 * qk_rows]),
                              qkv_bias[2 * qk_rows:]])
    qkv = F.linear(windows, module.qkv.weight, qkv_bias)
    q, k, v = (t.reshape(windows.shape[0], tokens, heads, -1).transpose(1, 2)
               for t in qkv.split([qk_rows, qk_rows, heads * v_width], -1))
    if logit_scale is not None:  # V2: cosine attention with a learned per-head temperature
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * scale_width(module) ** -0.5) @ k.transpose(-2, -1)
    attn = attn + position_bias
    if shifted:
        mask = _shift_mask(full_h, full_w, window, shift, x.device)
        attn = attn.view(batch, rows * cols, heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, tokens, tokens)
    attn = F.dropout(F.softmax(attn, dim=-1), p=module.attention_dropout, training=module.training)
    out = (attn @ v).transpose(1, 2).reshape(windows.shape[0], tokens, heads * v_width)
    out = F.dropout(F.linear(out, module.proj.weight, module.proj.bias), p=module.dropout,
                    training=module.training)
    channels = out.shape[-1]
    out = out.view(batch, rows, cols, window[0], window[1], channels).permute(0, 1, 3, 2, 4, 5)
    out = out.reshape(batch, full_h, full_w, channels)
    if shifted:
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    return out[:, :height, :width, :].contiguous()


class CompactShiftedWindowAttention(swin_transformer.ShiftedWindowAttention):
    def forward(self, x):
        return _windowed_attention(self, x, self.get_relative_position_bias(), None)


class CompactShiftedWindowAttentionV2(swin_transformer.ShiftedWindowAttentionV2):
    def forward(self, x):
        return _windowed_attention(self, x, self.get_relative_position_bias(), self.logit_scale)


class CompactRelativePositionalMultiHeadAttention(maxvit.RelativePositionalMultiHeadAttention):
    """MaxViT's attention with its output reshaped to heads x value width, not to the input's
    width, the widths read from ``to_qkv`` and ``merge`` (``attention_widths``);
    ``scale_factor`` is kept as it was built (torchvision's 1/sqrt(feat_dim))."""

    def forward(self, x):
        batch, groups, tokens, _ = x.shape
        heads = self.n_heads
        qk_width, v_width = attention_widths(heads, self.to_qkv.weight.shape[0],
                                             self.merge.weight.shape[1])
        q, k, v = (t.reshape(batch, groups, tokens, heads, -1).permute(0, 1, 3, 2, 4)
                   for t in self.to_qkv(x).split([heads * qk_width, heads * qk_width,
                                                  heads * v_width], -1))
        scores = q @ (k * self.scale_factor).transpose(-2, -1)
        attn = F.softmax(scores + self.get_relative_positional_bias(), dim=-1)
        out = (attn @ v).permute(0, 1, 3, 2, 4).reshape(batch, groups, tokens, heads * v_width)
        return self.merge(out)


# original class -> its compact form (exact classes: a subclass has a forward of its own)
COMPACT_FORMS: Dict[type, type] = {
    nn.MultiheadAttention: CompactMultiheadAttention,
    swin_transformer.ShiftedWindowAttention: CompactShiftedWindowAttention,
    swin_transformer.ShiftedWindowAttentionV2: CompactShiftedWindowAttentionV2,
    maxvit.RelativePositionalMultiHeadAttention: CompactRelativePositionalMultiHeadAttention,
}

# traced as one operation (nn.MultiheadAttention is a torch.nn leaf already)
ATTENTION_MODULES = (nn.MultiheadAttention, swin_transformer.ShiftedWindowAttention,
                     maxvit.RelativePositionalMultiHeadAttention)


@contextlib.contextmanager
def explicit_attention(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with every attention module in its compact form for the duration (the same
    function, tested): nn.MultiheadAttention's fused CPU kernels are invisible to
    torch.utils.flop_counter.FlopCounterMode (its projections and products go uncounted), the
    compact form's linear maps and matmuls are not, so FLOPs before and after pruning compare."""
    swapped = [(module, type(module)) for module in model.modules() if compact_form(module)]
    try:
        for module, _ in swapped:
            module.__class__ = compact_form(module)
        # scaled_dot_product_attention's fused CPU kernel is as invisible to the counter: its
        # math form is the same products as matmuls, which it counts.
        with sdpa_kernel(SDPBackend.MATH):
            yield model
    finally:
        for module, original in swapped:
            module.__class__ = original


def compact_form(module: nn.Module) -> Optional[type]:
    """The compact class ``module`` takes once its widths change (None: it has none, or it is
    one already)."""
    return COMPACT_FORMS.get(type(module))


def is_compact_form_of(name: str, module: nn.Module) -> bool:
    form = COMPACT_FORMS.get(type(module))
    return form is not None and form.__name__ == name


# ---- width attributes that follow tensors ------------------------------------------------------

def _embedding_of(module: nn.Module, original: nn.Module) -> int:
    return module.in_proj_weight.shape[1]


def _kept(attribute: str) -> Callable[[nn.Module, nn.Module], int]:
    """A width compaction sets from the dependency graph (a ``SizeUse``: nn.MultiheadAttention
    has no per-head tensor to count its heads by), recorded here so that a checkpoint carries it."""
    return lambda module, original: getattr(module, attribute)


def _tensor_width(tensor: str, dim: int, child: str = "") -> Callable[[nn.Module, nn.Module], int]:
    """A width read off a tensor of the module (or of its ``child``)."""
    def width(module: nn.Module, original: nn.Module) -> int:
        return getattr(module.get_submodule(child) if child else module, tensor).shape[dim]
    return width


# class -> {attribute: its value computed from the compacted module and the module it was cut
# from}; classes are matched with isinstance, so a compact form follows as its original does. An
# attribute listed here is a width; the others of the class (image_size, patch_size,
# window_size, ...) are not. Head counts follow a per-head tensor where the module has one.
DERIVED_WIDTHS: Dict[type, Dict[str, Callable[[nn.Module, nn.Module], Union[int, Tuple[int, ...]]]]] = {
    nn.MultiheadAttention: {"embed_dim": _embedding_of, "kdim": _embedding_of,
                            "vdim": _embedding_of, "num_heads": _kept("num_heads")},
    swin_transformer.ShiftedWindowAttentionV2: {"num_heads": _tensor_width("logit_scale", 0)},
    swin_transformer.ShiftedWindowAttention: {
        "num_heads": _tensor_width("relative_position_bias_table", 1),
        "head_dim": lambda module, original: scale_width(original)},
    maxvit.RelativePositionalMultiHeadAttention: {
        "n_heads": _tensor_width("relative_position_bias_table", 1)},
    maxvit.PartitionAttentionLayer: {
        "n_heads": _tensor_width("relative_position_bias_table", 1, "attn_layer.1")},
    swin_transformer.PatchMerging: {"dim": lambda m, original: m.reduction.weight.shape[1] // 4},
    swin_transformer.PatchMergingV2: {"dim": lambda m, original: m.reduction.weight.shape[1] // 4},
    vision_transformer.EncoderBlock: {"num_heads": lambda m, original: m.self_attention.num_heads},
    vision_transformer.VisionTransformer: {
        "hidden_dim": lambda m, original: m.class_token.shape[-1],
        "mlp_dim": lambda m, original: _mlp_widths(m.encoder.layers)},
}


def _mlp_widths(blocks: nn.Module) -> Union[int, Tuple[int, ...]]:
    """VisionTransformer's one ``mlp_dim``, or the per-block widths once pruning made them
    differ (the attribute then says what each block has instead of a width none has)."""
    widths = [block.mlp[0].out_features for block in blocks]
    return widths[0] if len(set(widths)) == 1 else tuple(widths)


def derived_widths(module: nn.Module) -> Optional[Dict[str, Callable[[nn.Module, nn.Module], int]]]:
    for cls, widths in DERIVED_WIDTHS.items():
        if isinstance(module, cls):
            return widths
    return None


def follow_widths(module: nn.Module, original: nn.Module) -> None:
    """After compaction changed ``module``'s tensors (its own or its children's; ``original``:
    the module it was cut from): take the compact form, if it has one, and set every width
    attribute from the tensors."""
    form = compact_form(module)
    if form is not None:
        module.__class__ = form
    for attribute, width_of in (derived_widths(module) or {}).items():
        width = width_of(module, original)
        setattr(module, attribute, tuple(width) if isinstance(width, tuple) else int(width))
