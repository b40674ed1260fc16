"""The dense stages' ``similarity`` (and ``preprocess.modality``) through every source of settings, and the CLI."""

from __future__ import annotations

import argparse

import pytest

from monai_contreg.errors import UserInputError
from monai_contreg.methods.presets import get_preset
from tests.methods.test_config_sources import SOURCES

VALID = [
    # preset, key, value, [(stage index, similarity)] it must give
    ("io", "stages.0.similarity", "lncc", [(0, "lncc")]),
    ("io", "features.similarity", "mi", [(0, "mi")]),
    ("accurate", "features.similarity", "mi", [(0, "mi"), (1, "mi")]),  # every dense stage
    ("accurate", "stages.1.similarity", "lncc", [(0, "mind"), (1, "lncc")]),
    ("convexadam", "features.similarity", "lncc", [(1, "lncc")]),  # the convex stage has no similarity
]

INVALID = [
    ("io", "stages.0.similarity", "ncc",
     "DenseStage: unknown similarity 'ncc'; expected one of ['mind', 'lncc', 'mi']. Did you mean 'lncc'? "
     "(in stages.0.similarity, that is stages.0)"),
    ("io", "features.similarity", "nmi",
     "DenseStage: unknown similarity 'nmi'; expected one of ['mind', 'lncc', 'mi']. Did you mean 'mi'? "
     "(in features.similarity, that is stages.0.similarity)"),
    ("convex", "features.similarity", "mi",
     "RegistrationConfig: features.similarity has no effect on this config: it has no dense stage (stages: "
     "['convex']); similarity belongs to a dense stage (add one: method=io, or a stages list with kind: dense)."),
    ("io", "preprocess.modality", "pet",
     "RegistrationConfig: unknown preprocess.modality 'pet'; expected one of ['auto', 'ct', 'mr']."),
]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("preset, key, value, expected", VALID)
def test_every_source_sets_the_similarity_alike(source, preset, key, value, expected, tmp_path):
    cfg = SOURCES[source](preset, key, value, tmp_path)
    for i, sim in expected:
        assert cfg.stages[i].similarity == sim
    reference = get_preset(preset)
    reference.set(key, value)
    assert cfg == reference


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("preset, key, value, message", INVALID)
def test_every_source_gives_the_same_error_naming_the_key(source, preset, key, value, message, tmp_path):
    with pytest.raises(UserInputError) as err:
        SOURCES[source](preset, key, value, tmp_path)
    assert str(err.value) == message


def test_the_modality_through_every_source(tmp_path):
    for source in SOURCES.values():
        assert source("io", "preprocess.modality", "mr", tmp_path).preprocess.modality == "mr"


def test_the_default_is_mind_everywhere_and_reading_differing_stages_is_an_error():
    from monai_contreg.methods.presets import preset_names

    for name in preset_names():
        assert all(s.similarity == "mind" for s in get_preset(name).dense_stages), name
        assert get_preset(name).preprocess.modality == "auto"
    cfg = get_preset("accurate")
    cfg.set("stages.1.similarity", "lncc")
    with pytest.raises(UserInputError, match=r"features.similarity: the stages \[\d, \d\] hold different values"):
        cfg.get("features.similarity")
    cfg.features.similarity = "mi"  # the Python attribute is the same key
    assert [s.similarity for s in cfg.dense_stages] == ["mi", "mi"]


def _cli_config(argv: list[str]):
    from monai_contreg.cli import build_parser, check_arguments
    from monai_contreg.commands import _config

    args = build_parser().parse_args(["register", "f.nii.gz", "m.nii.gz", "-o", "d.nii.gz", *argv])
    check_arguments(args)
    return _config(args)


def test_the_command_line_flags():
    cfg = _cli_config(["--similarity", "mi", "--modality", "mr"])
    assert cfg.stages[-1].similarity == "mi" and cfg.preprocess.modality == "mr"
    cfg = _cli_config(["--preset", "accurate", "--similarity", "lncc"])
    assert [s.similarity for s in cfg.dense_stages] == ["lncc", "lncc"]
    assert _cli_config([]).stages[0].similarity == "mind"
    with pytest.raises(UserInputError, match="--similarity"):
        _cli_config(["--similarity", "ssd"])
    with pytest.raises(UserInputError, match="--modality"):
        _cli_config(["--modality", "pet"])


def test_the_cli_names_are_the_enums():
    from monai_contreg.cli import MODALITY_NAMES, SIMILARITY_NAMES
    from monai_contreg.modes import Modality, Similarity

    assert SIMILARITY_NAMES == tuple(m.value for m in Similarity)
    assert MODALITY_NAMES == tuple(m.value for m in Modality)
