"""The channel-dependency graph and physical removal on every registered architecture: groups,
residual streams, option A's zero-padding shortcut, refusal of unknown operations, and a compact
model that computes what the masked one does under random selections."""
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from models.base import PrunableNet
from pruners.compact import compact_model, pruned_sets, zero_channels
from pruners.graph import UnsupportedOperation, build_graph
from models.registry import MODELS, register_model

# Small widths keep the 224x224 ImageNet layouts fast on a CPU; every width at least 2 so a
# group can lose all but one channel.
def small_widths(name, **options):
    defaults = models.model_class(name).widths_for(**options)
    divisor = 16 if name in ("resnet18", "resnet50", "alexnet_imagenet", "vgg16_bn") else 2
    return [max(2, w // divisor) for w in defaults]


def _random_batchnorm(model):
    """Trained-looking BatchNorm: a zeroed conv filter would still give its shift."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-1, 1)


def _selection(graph, residual, rng, mode):
    chosen = {}
    for group in graph.prunable(residual=residual):
        size = len(group)
        count = {"nothing": 0, "all_but_one": size - 1, "random": rng.randint(0, size - 1)}[mode]
        chosen[group.name] = rng.sample(range(size), count)
    return chosen


ARCHITECTURES = [(name, {}) for name in models.model_names() if name not in
                 ("resnet20", "resnet32", "resnet56", "resnet110")]
ARCHITECTURES += [("resnet20", {"shortcut": "A"}), ("resnet20", {"shortcut": "B"}),
                  ("resnet32", {"shortcut": "A"})]


@pytest.mark.parametrize("mode", ["random", "all_but_one", "nothing"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("name,options", ARCHITECTURES)
def test_compact_equals_masked_under_random_selections(name, options, residual, mode):
    rng = random.Random(f"{name}{options}{residual}{mode}")
    torch.manual_seed(0)
    shape = (3, 32, 32) if rng.random() < 0.5 or name.startswith("resnet") else (1, 28, 28)
    model = models.create_model(name, shape, 10, widths=small_widths(name, **options), **options)
    _random_batchnorm(model)
    graph = build_graph(model, model.input_shape)
    selection = _selection(graph, residual, rng, mode)
    zero_channels(model, graph, pruned_sets(graph, selection))
    small = compact_model(model, selection, graph)
    assert type(small) is type(model) and small.options == model.options
    removed = sum(len(v) for v in selection.values())
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (params(small) < params(model)) == (removed > 0)
    x = torch.randn(2, *shape)
    model.eval(), small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=0)
    # rebuilt from its config alone: same class, same widths, same tensors' shapes
    config = small.config()
    again = models.create_model(config["model"], config["input_shape"], config["num_classes"],
                                config["widths"], **config.get("options", {}))
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in small.state_dict().items()}


@pytest.mark.parametrize("shortcut,streams", [("A", [16, 16, 32]), ("B", [16, 32, 64])])
def test_resnet_groups_blocks_and_streams(shortcut, streams):
    model = models.create_model("resnet20", (3, 32, 32), 10, shortcut=shortcut)
    graph = build_graph(model, model.input_shape)
    residual = [g for g in graph.groups if g.residual]
    assert [len(g) for g in residual] == streams
    internal = graph.prunable(residual=False)
    assert [g.writers for g in internal] == [(f"layer{s}.{b}.conv1",) for s in (1, 2, 3) for b in range(3)]
    # stage 1's stream is written by the stem and every block that adds into it, in all stages
    # (option A carries its channels on into stages 2 and 3)
    stem = graph.group("conv1")
    assert "layer1.2.conv2" in stem.writers
    assert ("layer3.0.conv2" in stem.writers) == (shortcut == "A")
    fc = graph.group("fc")
    assert fc.fixed and "outputs" in fc.reason


def test_option_a_stream_pruning_removes_linked_channels_in_every_stage():
    model = models.create_model("resnet20", (3, 32, 32), 10)
    graph = build_graph(model, model.input_shape)
    small = compact_model(model, {"conv1": [0, 5, 9]}, graph)  # three stage-1 stream channels
    assert small.widths[:3] == (13, 16, 32)
    assert small.layer2[0].conv2.out_channels == 29 and small.layer3[0].conv2.out_channels == 61
    assert small.fc.in_features == 61


def test_a_zeroed_channel_is_zero_after_batchnorm():
    torch.manual_seed(0)
    model = models.create_model("resnet20", (3, 32, 32), 10)
    _random_batchnorm(model)
    graph = build_graph(model, model.input_shape)
    zero_channels(model, graph, pruned_sets(graph, {"layer1.0.conv1": [3]}))
    block = model.layer1[0]
    assert block.bn1.weight[3] == 0 and block.bn1.bias[3] == 0
    seen = {}
    block.bn1.register_forward_hook(lambda m, i, out: seen.setdefault("out", out))
    model.eval()(torch.randn(2, 3, 32, 32))
    assert torch.all(seen["out"][:, 3] == 0) and torch.any(seen["out"][:, 2] != 0)


def test_chains_are_graphs_of_one_writer_per_group():
    model = models.create_model("lenet_5_caffe", (1, 28, 28), 10)
    graph = build_graph(model, model.input_shape)
    assert [(g.name, len(g), g.residual, g.fixed) for g in graph.groups] == [
        ("conv1", 20, False, False), ("conv2", 50, False, False), ("fc1", 500, False, False),
        ("fc2", 10, False, True)]
    flatten_read = next(u for u in graph.uses if u.key == "fc1.weight" and u.dim == 1)
    # 4 x 4 columns per conv2 channel, each channel's id repeated over its block
    assert len(flatten_read.ids) == 800 and len(set(flatten_read.sets)) == 50
    assert all(len(set(flatten_read.sets[16 * c:16 * c + 16])) == 1 for c in range(50))


# ---- operations the graph does not know are refused ------------------------------------------

class ChannelShuffleNet(PrunableNet):
    """A conv, a cumulative sum over channels (nothing in the table), a classifier."""
    default_widths = (6,)

    def __init__(self, input_shape, num_classes, widths=None):
        super().__init__(input_shape, num_classes, widths)
        self.conv1 = nn.Conv2d(input_shape[0], self.widths[0], 3)
        self.fc = nn.Linear(self.widths[0], num_classes)

    def forward(self, x):
        x = torch.cumsum(self.conv1(x), dim=1)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class GroupedConvNet(ChannelShuffleNet):
    def __init__(self, input_shape, num_classes, widths=None):
        super().__init__(input_shape, num_classes, widths)
        self.conv2 = nn.Conv2d(self.widths[0], 2 * self.widths[0], 3, groups=2)
        self.fc = nn.Linear(2 * self.widths[0], num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.conv2(self.conv1(x)), 1).flatten(1))


@pytest.fixture
def registered():
    """Registers test models for one test only (the registry feeds other tests' parameters)."""
    names = []

    def register(name, cls):
        register_model(name)(cls)
        names.append(name)
        return cls
    yield register
    for name in names:
        MODELS.remove(name)


@pytest.mark.parametrize("cls,message", [(ChannelShuffleNet, "function cumsum at node cumsum"),
                                          (GroupedConvNet, "grouped convolution (groups=2, 3 input and 6 output channels per group) at module conv2")])
def test_unknown_operations_are_refused_with_their_name(cls, message, registered):
    registered(f"test_{cls.__name__.lower()}", cls)
    model = cls((3, 16, 16), 10)
    with pytest.raises(UnsupportedOperation, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_graph(model, model.input_shape)


def test_pruning_py_refuses_an_unsupported_model_with_one_line(registered, tmp_path, mnist_dir, capsys):
    import pruning
    from tests.conftest import run_script
    from utils import checkpoints
    registered("test_channel_shuffle", ChannelShuffleNet)
    model = ChannelShuffleNet((1, 28, 28), 10)
    path = checkpoints.save_checkpoint(checkpoints.make_checkpoint(model, "mnist", {}, {}),
                                       tmp_path / "shuffle.pt")
    before = sorted(tmp_path.iterdir())
    code, _ = run_script(pruning.main, [f"--load_folder_model={path}", "--pruning_method=fpgm",
                                        f"--data_dir={mnist_dir}", f"--checkpoint_dir={tmp_path}",
                                        "--no_download", "--no_verify_data", "--epochs=1"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "function cumsum" in err[0] and "refuses the model" in err[0]
    assert sorted(tmp_path.iterdir()) == before


# ---- the scripts on a residual network --------------------------------------------------------

@pytest.mark.parametrize("residual", ["False", "True"])
def test_fpgm_resnet_end_to_end_through_the_scripts(residual, tmp_path, mnist_dir, capsys):
    """pruning.py prunes a resnet20 checkpoint; calFLOP.py and baseline.py --do_training=False
    work on the compact file alone."""
    import baseline
    import calFLOP
    import pruning
    from tests.conftest import run_script
    from utils import checkpoints
    torch.manual_seed(0)
    widths = small_widths("resnet20", shortcut="A")
    model = models.create_model("resnet20", (1, 28, 28), 10, widths=widths)
    parent = checkpoints.save_checkpoint(
        checkpoints.make_checkpoint(model, "mnist", {}, {"learning_rate": 0.01}), tmp_path / "r20.pt")
    common = [f"--data_dir={mnist_dir}", f"--checkpoint_dir={tmp_path}", "--no_download",
              "--no_verify_data", "--no_progress"]
    code, result = run_script(pruning.main, [
        f"--load_folder_model={parent}", "--pruning_method=fpgm", "--cut_rate=0.4", "--epochs=1",
        "--batch_size=128", f"--prune_residual={residual}", "--inference_sampling=2",
        "--inference_batch_size=8", *common])
    assert code == 0
    saved = checkpoints.load_checkpoint(result["path"])
    meta = saved["pruning"]
    assert meta["compact_max_difference"] < 1e-5 and meta["prune_residual"] == (residual == "True")
    streams = saved["config"]["widths"][:3]
    assert (streams == widths[:3]) == (residual == "False")
    assert saved["config"]["options"] == {"shortcut": "A"}
    assert meta["flops"]["compact"] == result["after"]["flops"] < result["before"]["flops"]
    out = capsys.readouterr().out
    assert "FLOPs (paper's counting)" in out and "speed-up, deployed" in out
    assert result["after"]["deployed_throughput"]["median_ms"] > 0  # timed deployed as well
    code, table = run_script(calFLOP.main, [f"--load_folder_model={result['path']}", *common[:-1]])
    assert code == 0 and table["total"]["flops"] == result["after"]["flops"]
    assert table["total"]["original_flops"] == result["before"]["flops"]
    code, metrics = run_script(baseline.main, ["--model=resnet20", f"--load_folder_model={result['path']}",
                                               "--do_training=False", "--inference_sampling=2",
                                               "--inference_batch_size=8", *common])
    assert code == 0 and metrics["top1_acc"] == result["after"]["top1_acc"]


def test_magnitude_pruned_resnet_gets_flop_percent_from_what_each_layer_reads():
    from pruners.songhan import SongHanPruner
    from utils.masks import make_permanent
    from utils.reporting.counting import input_density
    from utils.reporting.tables import flop_table, render_markdown
    torch.manual_seed(0)
    model = models.create_model("resnet20", (1, 28, 28), 10, widths=small_widths("resnet20"))
    SongHanPruner(cut_rate=0.7).prune_step(model, 1)
    make_permanent(model)
    images = torch.randn(16, 1, 28, 28)
    table = flop_table(model, (1, 28, 28), images=images)
    assert table["act_of"] == "input"
    reads = input_density(model, images)
    rows = {row["layer"]: row for row in table["layers"]}
    block = rows["layer2.1.conv1"]  # reads the stage-2 stream after its ReLU
    weight_density = block["nonzero"] / block["weights"]  # no bias in these convs
    assert block["act_density"] == reads["layer2.1.conv1"] < 1
    assert block["flop_density"] == pytest.approx(weight_density * reads["layer2.1.conv1"])
    assert rows["conv1"]["flop_density"] == pytest.approx(rows["conv1"]["nonzero"] / rows["conv1"]["weights"])
    assert "Act% = share of nonzero values in what the layer reads" in render_markdown(table)


def test_chunk_halves_flowing_to_different_layers_are_one_group_of_pairs():
    """chunk(2) splits at half the width, so channel i of each half leaves together: the halves
    (here one passed through, one through a depthwise conv) merge into one group whose units
    are the pairs, and the removal is exact."""
    from tests.user_models import SplitBlock
    from pruners import ChannelPruner
    model = nn.Sequential(nn.Conv2d(3, 8, 1), SplitBlock(8), nn.Conv2d(8, 4, 1))
    pruner = ChannelPruner(model, torch.randn(2, 3, 8, 8), criterion="l1norm", rate=0.5)
    (group,) = [g for g in pruner.groups if g.name == "0"]
    assert not group.fixed and group.writers == ("0", "1.depthwise")
    assert sorted(len(u) for u in group.units) == [2] * 4
    assert sorted(sorted(u) for u in group.units) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    pruner.step()
    small = pruner.compact()
    assert small[0].out_channels == 4 and small[1].depthwise.groups == 2
    assert pruner.compact_difference < 1e-5


class _BranchesOnValues(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        if x.sum() > 0:  # a Python branch on a tensor's value: torch.fx cannot trace it
            return self.conv(x)
        return self.conv(-x)


def test_an_untraceable_model_is_refused_with_fx_reason_and_a_hint():
    from pruners import ChannelPruner, UnsupportedOperation
    with pytest.raises(UnsupportedOperation) as caught:
        ChannelPruner(_BranchesOnValues(), (3, 8, 8))
    message = str(caught.value)
    assert message.startswith("_BranchesOnValues cannot be traced by torch.fx (TraceError:")
    assert "fx_leaf = True" in message and "concrete_args" in message
    assert len(message.splitlines()) == 1


def test_union_find_roots_are_the_smallest_id_of_each_component():
    """The tensor union-find (whole tensors of pairs at a time) against a plain reference: every
    id's root is the smallest id connected to it, whatever the order and batching of unions."""
    from pruners.graph.core import UnionFind
    generator = random.Random(0)
    uf, count = UnionFind(), 0
    reference = {}
    for _ in range(30):
        fresh = generator.randint(1, 40)
        uf.new(fresh)
        reference.update((i, i) for i in range(count, count + fresh))
        count += fresh
        pairs = [(generator.randrange(count), generator.randrange(count))
                 for _ in range(generator.randint(0, 25))]
        if pairs:
            a, b = (torch.tensor(column) for column in zip(*pairs))
            uf.union(a, b)
        for x, y in pairs:  # reference: relabel whole components to their smallest id
            low, high = sorted((reference[x], reference[y]))
            reference = {i: low if r == high else r for i, r in reference.items()}
    assert uf.roots(torch.arange(count)).tolist() == [reference[i] for i in range(count)]
    assert uf.roots(torch.arange(count).reshape(-1, 1).expand(count, 3)).shape == (count, 3)


@pytest.mark.parametrize("seed", range(5))
def test_sets_grouped_by_writers_on_tensors_match_the_python_pass(seed):
    """Grouping channel sets by the layers that write them: the tensor form (buckets by a sum
    of random numbers, checked exactly) gives the groups, their order and their sets' order that
    a pass over every channel gives."""
    from pruners.graph.operations import _sets_by_writers, _sets_by_writers_in_python
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 40, (12,), generator=generator).tolist()
    # Few distinct sets, so that many are written by several layers.
    written = torch.randint(0, 60, (sum(sizes),), generator=generator)
    assert _sets_by_writers(written, sizes) == _sets_by_writers_in_python(written.tolist(), sizes)


def test_sets_grouped_by_writers_fall_back_when_buckets_collide(monkeypatch):
    """Every writer given the same number: all signatures collide, the exact check notices and
    the Python pass decides."""
    from pruners.graph.operations import _sets_by_writers, _sets_by_writers_in_python
    sizes = [4, 4, 3]
    written = torch.tensor([0, 1, 2, 3, 0, 1, 5, 6, 7, 8, 0])
    monkeypatch.setattr(torch, "randint", lambda low, high, size, generator=None:
                        torch.ones(size, dtype=torch.long))
    expected = _sets_by_writers_in_python(written.tolist(), sizes)
    assert _sets_by_writers(written, sizes) == expected
    assert [w for w, _ in expected] == [[0, 1, 2], [0, 1], [0], [1], [2]]
