"""Parameters as the platform sends them: typed, validated, with errors that name the field."""

from pathlib import Path

import pytest

from sam2_refine import interface as ui
from sam2_refine.errors import ParameterError
from sam2_refine.parameters import (
    DatasetSizes, Location, parse_batch_text, parse_parameters, resolve_locations,
)
from sam2_refine.originals import select_originals

MODELS = ["sam2.1_hiera_small.pt", "sam2.1_hiera_tiny.pt"]
SIZES = DatasetSizes(xy=4, z=3, time=5)


def raw(**interface_values):
    values = {ui.NOTES: "", ui.MODEL: "sam2.1_hiera_tiny.pt", ui.REFINE_TAGS: ["nucleus"]}
    values.update(interface_values)
    return {
        "datasetId": "66b2c9d4e1a2b3c4d5e6f708", "image": "annotations/sam2_refine_worker:latest",
        "channel": 1, "tags": ["refined"], "tile": {"XY": 1, "Z": 2, "Time": 0},
        "assignment": {"XY": 1, "Z": 2, "Time": 0}, "connectTo": {"tags": [], "channel": None},
        "workerInterface": values,
    }


def parse(parameters):
    return parse_parameters(parameters, None, MODELS, Path("/models"))


def test_defaults_from_a_minimal_configuration():
    params = parse(raw())
    assert params.padding == 0.0 and params.smoothing == 0.7
    assert params.resolution == ui.RESOLUTION_AUTO  # saved before the field existed
    assert params.delete_originals is False
    assert params.checkpoint_path == Path("/models/sam2.1_hiera_tiny.pt")
    assert params.output_tags == ("refined",) and params.output_channel == 1
    assert params.connect_to is None


@pytest.mark.parametrize(("given", "expected"), [(2, 2.0), ("2", 2.0), (" -3.5 ", -3.5), ("", 0.0), (None, 0.0)])
def test_padding_accepts_numbers_and_numeric_strings(given, expected):
    assert parse(raw(**{ui.PADDING: given})).padding == expected


@pytest.mark.parametrize("given", ["abc", "21", -20.5, "nan", True])
def test_padding_out_of_range_or_not_a_number_names_the_field(given):
    with pytest.raises(ParameterError) as caught:
        parse(raw(**{ui.PADDING: given}))
    assert caught.value.field == ui.PADDING
    assert "-20 to 20" in caught.value.info


def test_smoothing_range():
    assert parse(raw(**{ui.SMOOTHING: "3"})).smoothing == 3.0
    with pytest.raises(ParameterError, match="Smoothing"):
        parse(raw(**{ui.SMOOTHING: 3.5}))


@pytest.mark.parametrize("model", [None, "", "sam2.1_hiera_huge.pt"])
def test_missing_or_unknown_model_lists_the_choices(model):
    with pytest.raises(ParameterError) as caught:
        parse(raw(**{ui.MODEL: model}))
    assert caught.value.field == ui.MODEL
    assert "sam2.1_hiera_small.pt" in caught.value.info


def test_unknown_resolution_is_refused():
    with pytest.raises(ParameterError, match="Resolution"):
        parse(raw(**{ui.RESOLUTION: "Best"}))
    assert parse(raw(**{ui.RESOLUTION: "Whole frame"})).resolution == ui.RESOLUTION_WHOLE_FRAME


def test_delete_without_a_tag_is_refused():
    with pytest.raises(ParameterError) as caught:
        parse(raw(**{ui.REFINE_TAGS: [], ui.DELETE_ORIGINALS: True}))
    assert caught.value.field == ui.REFINE_TAGS
    assert "Choose the tag" in caught.value.info
    assert parse(raw(**{ui.REFINE_TAGS: [], ui.DELETE_ORIGINALS: False})).refine_tags == ()


def test_connect_to_is_read_when_it_has_tags():
    parameters = raw()
    parameters["connectTo"] = {"tags": ["cell"], "channel": 2}
    assert parse(parameters).connect_to.tags == ("cell",)
    parameters["connectTo"] = {"channel": None}  # older servers send no tags at all
    assert parse(parameters).connect_to is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", [(0, 0)]), ("1-3", [(0, 2)]), ("1, 4-6", [(0, 0), (3, 5)]), (" 2 - 3 ,2", [(1, 2)]),
     ("5-6, 1-2, 3", [(0, 2), (4, 5)]), ("ALL", None), ("all", None)],
)
def test_batch_text(text, expected):
    assert parse_batch_text(ui.BATCH_XY, text) == expected


def test_a_huge_range_is_read_without_being_expanded():
    """Expanding 10**12 positions would take terabytes; spans take a few bytes."""
    assert parse_batch_text(ui.BATCH_TIME, f"1-{10**12}, 3") == [(0, 10**12 - 1)]


def test_a_huge_range_is_refused_naming_the_valid_range():
    with pytest.raises(ParameterError) as caught:
        resolve_locations(parse(raw(**{ui.BATCH_TIME: f"2, 1-{10**12}"})), SIZES)
    assert caught.value.field == ui.BATCH_TIME
    assert f"position {10**12} is beyond this dataset's 5 Time positions" in caught.value.message
    assert "1 to 5" in caught.value.info


@pytest.mark.parametrize("text", ["0", "3-1", "1-", "a", "1,,2", "1.5", "-2", "1-" + "9" * 5000])
def test_bad_batch_text_names_the_field(text):
    with pytest.raises(ParameterError) as caught:
        parse_batch_text(ui.BATCH_Z, text)
    assert caught.value.field == ui.BATCH_Z


def test_locations_empty_batch_means_current_tile():
    assert resolve_locations(parse(raw()), SIZES) == [Location(1, 2, 0)]


def test_locations_from_ranges_and_all():
    params = parse(raw(**{ui.BATCH_XY: "1-2", ui.BATCH_Z: "", ui.BATCH_TIME: "all"}))
    locations = resolve_locations(params, SIZES)
    assert len(locations) == 2 * 1 * 5
    assert locations[0] == Location(0, 2, 0) and locations[-1] == Location(1, 2, 4)


def test_position_beyond_the_dataset_is_refused():
    with pytest.raises(ParameterError) as caught:
        resolve_locations(parse(raw(**{ui.BATCH_TIME: "4-6"})), SIZES)
    assert caught.value.field == ui.BATCH_TIME
    assert "position 6" in caught.value.message and "1 to 5" in caught.value.info


def test_current_tile_missing_from_another_dataset_is_refused():
    parameters = raw()
    parameters["tile"] = {"XY": 9, "Z": 0, "Time": 0}
    with pytest.raises(ParameterError, match="Batch XY"):
        resolve_locations(parse(parameters), SIZES)


def polygon(tags, xy=0, z=0, time=0, shape="polygon"):
    return {"_id": str(id(tags)), "shape": shape, "tags": tags, "location": {"XY": xy, "Z": z, "Time": time}}


def test_selection_keeps_any_of_the_tags_at_the_chosen_locations():
    documents = [
        polygon(["nucleus"]), polygon(["cell", "x"]), polygon(["other"]), polygon(["nucleus"], xy=3),
        polygon(["nucleus"], shape="point"), polygon([]),
    ]
    chosen = select_originals(documents, ("nucleus", "cell"), [Location(0, 0, 0), Location(1, 0, 0)])
    assert list(chosen) == [Location(0, 0, 0)]
    assert [d["tags"] for d in chosen[Location(0, 0, 0)]] == [["nucleus"], ["cell", "x"]]
    everything = select_originals(documents, (), [Location(0, 0, 0)])
    assert len(everything[Location(0, 0, 0)]) == 4


def test_overlaps_are_refused_unless_allowed():
    assert parse(raw()).allow_overlaps is False  # saved before the field existed
    assert parse(raw(**{ui.OVERLAPS: False})).allow_overlaps is False
    assert parse(raw(**{ui.OVERLAPS: True})).allow_overlaps is True


def test_the_run_key_of_a_default_job_is_what_it_was_before_overlaps_could_be_allowed():
    """Earlier runs are recognised by their key: with overlaps refused (the default) it is
    byte for byte what the release before the field gave (digests from commit 0ed5306)."""
    from sam2_refine.markers import run_key

    assert run_key(parse(raw())) == "9050c5c3fb7d1126"
    assert run_key(parse(raw(**{ui.PADDING: 2}))) == "84f0a47a37f4eb40"
    assert run_key(parse(raw(**{ui.OVERLAPS: False}))) == "9050c5c3fb7d1126"
    assert run_key(parse(raw(**{ui.OVERLAPS: True}))) not in ("9050c5c3fb7d1126", "84f0a47a37f4eb40")
