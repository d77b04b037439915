"""One registry pattern for every extension point, and lists derived from the registries."""
import pytest

import models
import pruners
from pruners.base import Pruner
from pruners.registry import PRUNERS
from utils import data, export
from utils.errors import UserError
from utils.registry import Registry


def test_a_registry_names_its_entries_and_refuses_unknown_names_in_one_line():
    registry = Registry("widget", attribute="registry_name")

    @registry.register("b")
    class B:
        pass

    registry.add("a", type("A", (), {}))
    assert registry.names() == ["a", "b"] and B.registry_name == "b"
    assert registry.get("b") is B and "a" in registry
    with pytest.raises(UserError, match=r"^unknown widget 'c'; choose one of: a, b$"):
        registry.get("c")
    with pytest.raises(ValueError, match="registered twice"):
        registry.add("a", B)


@pytest.mark.parametrize("lookup, kind", [
    (models.model_class, "model"), (pruners.pruner_class, "pruning method"),
    (data.get_spec, "dataset"), (export.EXPORT_FORMATS.get, "export format")])
def test_every_extension_point_refuses_an_unknown_name_alike(lookup, kind):
    with pytest.raises(UserError, match=rf"^unknown {kind} 'nope'; choose one of: "):
        lookup("nope")


def test_an_unknown_export_format_is_refused_before_anything_is_written(tmp_path):
    model = models.create_model("lenet_300_100", (1, 28, 28), 10)
    with pytest.raises(UserError, match="unknown export format 'tflite'"):
        export.export_model(model, tmp_path / "m", ["state_dict", "tflite"], images=None)
    assert list(tmp_path.iterdir()) == []


def test_the_flags_choices_come_from_the_registries():
    import pruning
    parser = pruning.get_args_parser()
    choices = {action.dest: list(action.choices) for action in parser._actions if action.choices}
    assert choices["pruning_method"] == pruners.pruner_names()
    assert choices["export"] == export.EXPORT_FORMATS.names()
    assert choices["dataset"] == data.dataset_names()
    # --model takes any torchvision or user builder too: its help lists the registered ones
    baseline_help = __import__("baseline").get_args_parser().format_help()
    assert ", ".join(models.model_names()) in " ".join(baseline_help.split())


def test_a_new_filter_method_is_labelled_as_one_in_the_results_report():
    from benchmarks.results_report import method_label

    @pruners.register_pruner("test_filters")
    class TestFilters(Pruner):
        structured = True
    try:
        record = {"method": "test_filters", "flags": {"epochs": 2, "cut_rate": 0.3}}
        assert method_label(record) == "test_filters, 30% of filters, 2 epochs"
    finally:
        PRUNERS.remove("test_filters")
