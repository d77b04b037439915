"""Vision transformers through the dependency graph and compaction, on small configurations of
torchvision's ViT, Swin (V1 and V2) and MaxViT: the groups (attention heads per attention module,
MLP hidden width per block, the embedding as a residual stream), a step and compaction with
compact == masked, head counts and widths that follow, a file round trip, and the compact forms
of the attention modules computing what the originals do."""
import copy
import math

import pytest
import torch
import torch.nn as nn
from torchvision.models import maxvit, swin_transformer
from torchvision.models.vision_transformer import VisionTransformer

from pruners.channel import COMPACT_TOLERANCE, ChannelPruner
from pruners.compact import compact_model, pruned_sets, zero_channels
from pruners.graph import UnsupportedOperation, build_graph
from utils.checkpoints import load_model, save_model
from utils.errors import UserError
from utils.transformers import COMPACT_FORMS


def small_vit():
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                             hidden_dim=32, mlp_dim=64, num_classes=10)


def small_swin():
    # 32 x 32 input, 2 x 2 patches: stage 1 is 16 x 16 in 4 x 4 windows, shifted by 2
    return swin_transformer.SwinTransformer(patch_size=[2, 2], embed_dim=16, depths=[2, 2],
                                            num_heads=[2, 4], window_size=[4, 4], num_classes=10)


def small_swin_v2():
    return swin_transformer.SwinTransformer(
        patch_size=[2, 2], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
        num_classes=10, block=swin_transformer.SwinTransformerBlockV2,
        downsample_layer=swin_transformer.PatchMergingV2)


def small_maxvit():
    return maxvit.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2,
                         block_channels=[16, 32], block_layers=[1, 1], head_dim=4,
                         stochastic_depth_prob=0.0, num_classes=10)


BUILDERS = {"vit": small_vit, "swin": small_swin, "swin_v2": small_swin_v2, "maxvit": small_maxvit}
# attention module name -> (heads, head width), per model
ATTENTION = {
    "vit": {f"encoder.layers.encoder_layer_{i}.self_attention": (4, 8) for i in range(2)},
    "swin": {"features.1.0.attn": (2, 8), "features.1.1.attn": (2, 8),
             "features.3.0.attn": (4, 8), "features.3.1.attn": (4, 8)},
    "maxvit": {f"blocks.{b}.layers.0.layers.{kind}_attention.attn_layer.1": (heads, 4)
               for b, heads in ((0, 4), (1, 8)) for kind in ("window", "grid")},
}
ATTENTION["swin_v2"] = ATTENTION["swin"]
# the layer whose weight computes a head's q, k, v rows: the heads group is named after it
QKV = {"vit": "", "swin": ".qkv", "swin_v2": ".qkv", "maxvit": ".to_qkv"}
# MLP hidden groups (first Linear) -> width; embedding streams (first writer) -> width
MLP = {
    "vit": {f"encoder.layers.encoder_layer_{i}.mlp.0": 64 for i in range(2)},
    "swin": {"features.1.0.mlp.0": 64, "features.1.1.mlp.0": 64,
             "features.3.0.mlp.0": 128, "features.3.1.mlp.0": 128},
    "maxvit": {"blocks.0.layers.0.layers.window_attention.mlp_layer.1": 64,
               "blocks.0.layers.0.layers.grid_attention.mlp_layer.1": 64,
               "blocks.1.layers.0.layers.window_attention.mlp_layer.1": 128,
               "blocks.1.layers.0.layers.grid_attention.mlp_layer.1": 128},
}
MLP["swin_v2"] = MLP["swin"]
STREAMS = {"vit": {"conv_proj": 32}, "swin": {"features.0.0": 16, "features.2.reduction": 32},
           "maxvit": {"blocks.0.layers.0.layers.MBconv.proj.1": 16,
                      "blocks.1.layers.0.layers.MBconv.proj.1": 32}}
STREAMS["swin_v2"] = STREAMS["swin"]


def build(name):
    """The small model with every parameter moved off its init (zero biases, unit LayerNorm
    scales would hide a tensor the removal forgot), and its example input."""
    torch.manual_seed(0)
    model = BUILDERS[name]()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval(), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def heads_of(module: nn.Module) -> int:
    return module.n_heads if isinstance(module, maxvit.RelativePositionalMultiHeadAttention) \
        else module.num_heads


def head_width(module: nn.Module) -> int:
    if isinstance(module, nn.MultiheadAttention):
        return module.head_dim
    qkv = module.to_qkv if isinstance(module, maxvit.RelativePositionalMultiHeadAttention) else module.qkv
    return qkv.weight.shape[0] // 3 // heads_of(module)


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def graphs():
    found = {}
    for name in BUILDERS:
        model, x = build(name)
        found[name] = (model, x, build_graph(model, x))
    return found


@pytest.mark.parametrize("name", list(BUILDERS))
def test_groups_are_heads_mlp_and_embedding(name, graphs):
    _, _, graph = graphs[name]
    for attention, (heads, width) in ATTENTION[name].items():
        group = graph.group(attention + QKV[name])
        assert len(group) == 3 * heads * width and not group.residual and not group.fixed
        # one unit per head: its q, k and v rows, at positions h, heads + h, 2 heads + h
        assert len(group.units) == heads
        for h, unit in enumerate(group.units):
            assert unit == [part * heads * width + h * width + i
                            for part in range(3) for i in range(width)]
    for mlp, width in MLP[name].items():
        group = graph.group(mlp)
        assert len(group) == width and not group.residual and not group.fixed
        assert all(len(unit) == 1 for unit in group.units)
    for stream, width in STREAMS[name].items():
        group = graph.group(stream)
        assert len(group) == width and group.residual and not group.fixed
    prunable = {g.name for g in graph.prunable(residual=False)}
    expected = {a + QKV[name] for a in ATTENTION[name]} | set(MLP[name])
    assert expected <= prunable


def test_vit_class_token_and_position_embedding_are_the_embedding(graphs):
    _, _, graph = graphs["vit"]
    stream = set(graph.group("conv_proj").sets)
    for key in ("class_token", "encoder.pos_embedding"):
        use = next(u for u in graph.uses if u.key == key)
        assert use.dim == 2 and use.writes and set(use.sets) == stream
    ln = next(n for n in graph.normalizations if n.module == "encoder.ln")
    assert set(ln.sets) == stream
    head = next(u for u in graph.uses if u.key == "heads.head.weight" and u.dim == 1)
    assert set(head.sets) == stream


def test_swin_patch_merging_reads_each_channel_four_times(graphs):
    _, _, graph = graphs["swin"]
    stream = graph.group("features.0.0").sets
    reduction = next(u for u in graph.uses if u.key == "features.2.reduction.weight" and u.dim == 1)
    # input channel c at c, C + c, 2C + c, 3C + c of the concatenated neighbours
    assert reduction.sets == stream * 4


@pytest.mark.parametrize("name", list(BUILDERS))
def test_flop_rows_count_attention_and_tokens(name):
    """calFLOP's rows (conv, linear on every token, one row per attention module) add up to what
    torch.utils.flop_counter counts, dense and compact; zero weights of a projection skip MACs."""
    from utils.reporting.counting import count_flops, layer_stats
    model, x = build(name)
    attention_rows = {s.name: s for s in layer_stats(model, (3, 32, 32)) if s.name in ATTENTION[name]}
    assert set(attention_rows) == set(ATTENTION[name])
    assert sum(s.flops for s in layer_stats(model, (3, 32, 32))) == count_flops(model, (3, 32, 32))
    pruner = ChannelPruner(model, x, criterion="l1norm", rate=0.5, prune_residual=True)
    pruner.step()
    small = pruner.compact()
    rows = layer_stats(small, (3, 32, 32))
    assert sum(s.flops for s in rows) == count_flops(small, (3, 32, 32)) < count_flops(model, (3, 32, 32))
    assert sum(s.weights for s in rows) <= parameters(small)
    if name == "vit":  # 17 tokens: in_proj, out_proj on each, and the products between tokens
        block = small.encoder.layers[0].self_attention
        row = next(s for s in rows if s.name == "encoder.layers.encoder_layer_0.self_attention")
        embed, inner = block.in_proj_weight.shape[1], block.in_proj_weight.shape[0] // 3
        assert row.macs == 17 * (3 * inner * embed + embed * inner) + 2 * 17 * 17 * inner
        with torch.no_grad():
            block.in_proj_weight[:inner].zero_()  # the queries' projection
        row = next(s for s in layer_stats(small, (3, 32, 32)) if s.name == row.name)
        assert row.nonzero_macs == row.macs - 17 * inner * embed


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_step_and_compact_equal_the_masked_model(name, residual):
    model, x = build(name)
    original = copy.deepcopy(model)
    pruner = ChannelPruner(model, x, criterion="fpgm", rate=0.5, prune_residual=residual)
    pruner.step()
    small = pruner.compact()
    assert pruner.compact_difference < COMPACT_TOLERANCE
    assert parameters(small) < parameters(original)
    for attention, (heads, width) in ATTENTION[name].items():
        module = small.get_submodule(attention)
        assert type(module) is COMPACT_FORMS[type(original.get_submodule(attention))]
        assert heads_of(module) == heads - math.floor(heads * 0.5)
        assert head_width(module) == width   # the 1/sqrt(head width) scale is what it was
    for mlp, width in MLP[name].items():
        assert small.get_submodule(mlp).out_features == width // 2
    for stream, width in STREAMS[name].items():
        assert small.get_submodule(stream).weight.shape[0] == (width // 2 if residual else width)
    with torch.no_grad():
        assert small(x).shape == (2, 10)
    if name == "vit":
        assert small.hidden_dim == (16 if residual else 32) and small.mlp_dim == 32
        assert small.class_token.shape[-1] == small.encoder.pos_embedding.shape[-1] == small.hidden_dim
        for block in small.encoder.layers:
            assert block.num_heads == block.self_attention.num_heads == 2
            assert block.self_attention.embed_dim == small.hidden_dim
    if name.startswith("swin"):
        merging = small.features[2]
        assert merging.dim == (8 if residual else 16)
        assert merging.norm.normalized_shape[0] == (4 if name == "swin" else 2) * merging.dim
    if name == "maxvit":
        layer = small.blocks[1].layers[0].layers.grid_attention
        assert layer.n_heads == layer.attn_layer[1].n_heads == 4


def test_a_head_takes_its_rows_columns_and_bias_table_column():
    model, x = build("swin")
    graph = build_graph(model, x)
    attention = model.features[3][1].attn           # 4 heads of 8 channels
    group = graph.group("features.3.1.attn.qkv")
    removed_heads = [1, 3]
    positions = [p for h in removed_heads for p in group.units[h]]
    zero_channels(model, graph, pruned_sets(graph, {group.name: positions}))
    small = compact_model(model, {group.name: positions}, graph)
    kept = [0, 2]
    rows = torch.cat([torch.arange(part * 32 + h * 8, part * 32 + h * 8 + 8)
                      for part in range(3) for h in kept])
    pruned = small.features[3][1].attn
    assert torch.equal(pruned.qkv.weight, attention.qkv.weight[rows])
    assert torch.equal(pruned.qkv.bias, attention.qkv.bias[rows])
    values = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in kept])
    assert torch.equal(pruned.proj.weight, attention.proj.weight[:, values])
    assert torch.equal(pruned.relative_position_bias_table,
                       attention.relative_position_bias_table[:, kept])
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-4)


def test_no_rate_removes_every_head():
    model, x = build("swin")                         # stage 1 has 2 heads per attention
    pruner = ChannelPruner(model, x, criterion="l1norm", rate=0.9,
                           layer_rates={"features.1.0.attn.qkv": 0.99})
    pruner.step()
    small = pruner.compact()
    heads = [heads_of(m) for m in small.modules()
             if isinstance(m, swin_transformer.ShiftedWindowAttention)]
    assert heads == [1, 1, 1, 1]                     # 2 x 0.99 and 4 x 0.9 leave one head
    graph = pruner.graph
    group = graph.group("features.1.0.attn.qkv")
    with pytest.raises(ValueError, match="disconnect"):
        compact_model(model, {group.name: list(range(len(group)))}, graph)
    with pytest.raises(ValueError, match="units of 24"):  # half a head
        compact_model(model, {group.name: list(range(12))}, graph)


@pytest.mark.parametrize("name", ["vit", "swin"])
def test_saved_and_loaded_compact_model(name, tmp_path):
    model, x = build(name)
    pruner = ChannelPruner(model, x, criterion="l1norm", rate=0.5, prune_residual=True)
    pruner.step()
    small = pruner.compact()
    path = save_model(small, tmp_path / f"{name}.pt")
    loaded = load_model(path, model=BUILDERS[name]()).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x), atol=0, rtol=0)
    for attention, (heads, _) in ATTENTION[name].items():
        module = loaded.get_submodule(attention)
        assert type(module) is type(small.get_submodule(attention))
        assert heads_of(module) == heads // 2
    if name == "vit":
        assert loaded.hidden_dim == 16 and loaded.encoder.layers[0].num_heads == 2
        assert loaded.mlp_dim == 32


def test_vit_mlp_dim_lists_the_blocks_widths_once_they_differ(tmp_path):
    model, x = build("vit")
    pruner = ChannelPruner(model, x, criterion="l1norm", rate=0.5,
                           layer_rates={"encoder.layers.encoder_layer_0.mlp.0": 0.25})
    pruner.step()
    small = pruner.compact()
    assert small.mlp_dim == (48, 32)
    loaded = load_model(save_model(small, tmp_path / "vit.pt"), model=small_vit())
    assert loaded.mlp_dim == (48, 32)
    assert [block.mlp[0].out_features for block in loaded.encoder.layers] == [48, 32]


@pytest.mark.parametrize("original,call,shape", [
    (lambda: nn.MultiheadAttention(32, 4, batch_first=True),
     lambda m, x: m(x, x, x, need_weights=False)[0], (2, 5, 32)),
    (lambda: nn.MultiheadAttention(32, 4), lambda m, x: m(x, x, x)[0], (5, 2, 32)),
    (lambda: swin_transformer.ShiftedWindowAttention(16, [4, 4], [2, 2], 2),
     lambda m, x: m(x), (2, 6, 7, 16)),   # padded to 8 x 8, shifted
    (lambda: swin_transformer.ShiftedWindowAttentionV2(16, [4, 4], [2, 2], 2),
     lambda m, x: m(x), (2, 8, 8, 16)),
    (lambda: maxvit.RelativePositionalMultiHeadAttention(16, 4, 4), lambda m, x: m(x), (2, 3, 4, 16)),
])
def test_compact_forms_compute_what_the_originals_do(original, call, shape):
    torch.manual_seed(0)
    module = original().eval()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.5)
    compact = copy.deepcopy(module)
    compact.__class__ = COMPACT_FORMS[type(module)]
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(call(compact, x), call(module, x), atol=1e-5, rtol=1e-5)


class CrossAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(3, 8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        q, kv = self.a(x), self.b(x)
        return self.fc(self.attention(q, kv, kv)[0])


def test_cross_attention_is_refused_by_name():
    with pytest.raises(UnsupportedOperation, match="different query, key and value at module attention"):
        build_graph(CrossAttention(), torch.randn(2, 4, 3))


@pytest.mark.parametrize("name", ["vit", "swin"])
def test_taylor_scores_heads_through_their_projection_parameters(name):
    """ViT's in-projection and Swin's qkv are called functionally inside the attention module,
    so no hook sees their output: the criterion differentiates their rows' parameters instead
    (weight x grad summed over a row, plus bias x grad: the activation x grad of that channel)."""
    from pruners.channel import taylor_importance
    model, x = build(name)
    graph = build_graph(model, x)
    heads = [graph.group(a + QKV[name]) for a in ATTENTION[name]]
    gathered = taylor_importance(model.train(), graph, heads, [(x, torch.tensor([1, 2]))])
    for group in heads:
        scores = gathered[group.name]["taylor"]
        per_head = torch.stack([scores[unit].sum() for unit in group.units])
        assert bool((per_head > 0).all()) and len(set(per_head.tolist())) == len(group.units)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_a_compact_model_prunes_again(name):
    """The compact forms are in the graph's table as their originals are: a pruned model's
    graph builds, and a second removal is exact too."""
    model, x = build(name)
    first = ChannelPruner(model, x, criterion="l1norm", rate=0.3, prune_residual=True)
    first.step()
    small = first.compact()
    second = ChannelPruner(small, x, criterion="l1norm", rate=0.3, prune_residual=True)
    second.step()
    smaller = second.compact()
    assert second.compact_difference < COMPACT_TOLERANCE
    assert parameters(smaller) < parameters(small)


def test_a_pruned_vit_exports_to_onnx_and_matches(tmp_path):
    """The compact attention (fused scaled_dot_product_attention in eval) exports, and the
    runtime's outputs match PyTorch's (utils.export checks them before writing)."""
    from utils.export import export_onnx
    model, x = build("vit")
    pruner = ChannelPruner(model, x, criterion="l1norm", rate=0.5)
    pruner.step()
    small = pruner.compact().eval()
    result = export_onnx(small, tmp_path / "vit.onnx", torch.randn(4, 3, 32, 32))
    assert (tmp_path / "vit.onnx").is_file() and result["max_abs_diff"] < 1e-4


def test_the_papers_conv_counting_is_not_claimed_for_a_transformer():
    from pruners.structured import paper_counted_flops
    from utils.reporting.counting import layer_stats
    model, x = build("vit")
    graph = build_graph(model, x)
    assert paper_counted_flops(graph, layer_stats(model, (3, 32, 32)), 0.4) is None


@pytest.mark.parametrize("criterion", ["fpgm", "l1norm", "sfp", "taylor"])
def test_every_criterion_prunes_heads_and_mlp_and_exclude_takes_their_names(criterion):
    model, x = build("vit")
    first, second = "encoder.layers.encoder_layer_0.self_attention", "encoder.layers.encoder_layer_1.self_attention"
    pruner = ChannelPruner(model, x, criterion=criterion, rate=0.5, exclude=[first],
                           layer_rates={"encoder.layers.encoder_layer_1.mlp.0": 0.25})
    pruner.step(data=[(x, torch.tensor([1, 2]))] if criterion == "taylor" else None)
    small = pruner.compact()
    assert pruner.compact_difference < COMPACT_TOLERANCE
    assert small.get_submodule(first).num_heads == 4 and small.get_submodule(second).num_heads == 2
    assert [block.mlp[0].out_features for block in small.encoder.layers] == [32, 48]


# ---- the per-head width (attention="head_width") ---------------------------------------------

def test_head_width_groups_pair_query_and_key_and_block_them_by_head(graphs):
    for name in BUILDERS:
        model, x, _ = graphs[name]
        graph = build_graph(model, x, attention="head_width")
        for attention, (heads, width) in ATTENTION[name].items():
            projection = attention + QKV[name]
            with pytest.raises(KeyError):
                graph.group(projection)                 # no group of whole heads
            qk, v = graph.group(projection + "[qk]"), graph.group(projection + "[v]")
            assert not qk.fixed and not v.fixed and not qk.residual
            # query dimension i of head h with key dimension i of head h; sets in q, then k order
            assert len(qk) == 2 * heads * width and len(qk.units) == heads * width
            assert qk.units == [[j, heads * width + j] for j in range(heads * width)]
            assert len(v) == heads * width and v.units == [[j] for j in range(heads * width)]
            for group in (qk, v):                       # a block per head, in head order
                assert group.blocks == [list(range(h * width, (h + 1) * width)) for h in range(heads)]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_head_width_compact_equals_masked_keeps_heads_and_scale(name, tmp_path):
    model, x = build(name)
    original = copy.deepcopy(model)
    pruner = ChannelPruner(model, x, criterion="fpgm", rate=0.5, attention="head_width",
                           layer_rates={next(iter(ATTENTION[name])) + QKV[name] + "[v]": 0.25})
    pruner.step()
    small = pruner.compact()
    assert pruner.compact_difference < COMPACT_TOLERANCE
    for position, (attention, (heads, width)) in enumerate(ATTENTION[name].items()):
        module = small.get_submodule(attention)
        assert type(module) is COMPACT_FORMS[type(original.get_submodule(attention))]
        assert heads_of(module) == heads              # no head leaves
        qkv = dict(vit=lambda m: m.in_proj_weight, maxvit=lambda m: m.to_qkv.weight).get(
            name, lambda m: m.qkv.weight)(module)
        v_width = width - (width // 4 if position == 0 else width // 2)
        assert qkv.shape[0] == heads * (2 * (width // 2) + v_width)
        # every head lost as many: the selection's positions fall evenly on the heads
        for suffix in ("[qk]", "[v]"):
            group = pruner.graph.group(attention + QKV[name] + suffix)
            chosen = set(pruner.selection[group.name].tolist())
            per_head = {sum(p in chosen for u in block for p in group.units[u]) for block in group.blocks}
            assert len(per_head) == 1
    if name == "swin":   # V1 scales by the original head width, which the compact form records
        assert small.features[1][0].attn.head_dim == 8
    path = save_model(small, tmp_path / f"{name}.pt")
    loaded = load_model(path, model=BUILDERS[name]()).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small.eval()(x), atol=0, rtol=0)


def test_head_width_refuses_a_selection_that_leaves_heads_unequal():
    model, x = build("swin")                          # stage 1: 2 heads of 8 per attention
    graph = build_graph(model, x, attention="head_width")
    group = graph.group("features.1.0.attn.qkv[v]")
    with pytest.raises(ValueError, match="heads must each lose as many"):
        compact_model(model, {group.name: [0, 1, 8]}, graph)   # 2 from head 0, 1 from head 1
    with pytest.raises(UserError, match="attention must be one of"):
        build_graph(model, x, attention="tokens")


def test_head_width_then_heads_prunes_again():
    model, x = build("vit")
    first = ChannelPruner(model, x, criterion="l1norm", rate=0.5, attention="head_width")
    first.step()
    small = first.compact()
    second = ChannelPruner(small, x, criterion="l1norm", rate=0.5)   # whole heads now
    group = second.graph.group("encoder.layers.encoder_layer_0.self_attention")
    assert len(group.units) == 4 and len(group) == 4 * (4 + 4 + 4)  # q, k, v of 4 each per head
    second.step()
    smaller = second.compact()
    assert second.compact_difference < COMPACT_TOLERANCE
    attention = smaller.encoder.layers[0].self_attention
    assert attention.num_heads == 2 and attention.head_dim == 8      # the original scale's width


@pytest.mark.parametrize("criterion", ["sfp", "taylor"])
def test_head_width_takes_every_criterion(criterion):
    model, x = build("maxvit")
    pruner = ChannelPruner(model, x, criterion=criterion, rate=0.5, attention="head_width")
    pruner.step(data=[(x, torch.tensor([1, 2]))] if criterion == "taylor" else None)
    small = pruner.compact()
    assert pruner.compact_difference < COMPACT_TOLERANCE
    for attention, (heads, width) in ATTENTION["maxvit"].items():
        module = small.get_submodule(attention)
        assert module.n_heads == heads and module.to_qkv.out_features == heads * 3 * (width // 2)
