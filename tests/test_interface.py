"""The interface definition the platform stores and shows."""

import pytest

from sam2_refine import interface as ui
from sam2_refine.errors import WorkerError

SEED_FIELDS = [ui.BATCH_XY, ui.BATCH_Z, ui.BATCH_TIME, ui.REFINE_TAGS, ui.MODEL,
               ui.DELETE_ORIGINALS, ui.PADDING, ui.SMOOTHING]


def test_fields_types_defaults_and_order():
    fields = ui.build_interface(["b.pt", "sam2.1_hiera_small.pt"])
    for name in SEED_FIELDS:
        assert name in fields
    types = {name: spec["type"] for name, spec in fields.items()}
    assert types == {
        "SAM2 Refiner": "notes", "Batch XY": "text", "Batch Z": "text", "Batch Time": "text",
        "Tag of objects to refine": "tags", "Model": "select", "Resolution": "select",
        "Delete original annotations": "checkbox", "Padding": "number", "Smoothing": "number",
        "Doubtful refinements": "select", "Allow overlapping outlines": "checkbox",
    }
    orders = [spec["displayOrder"] for spec in fields.values()]
    assert orders == sorted(orders) and len(set(orders)) == len(orders)
    assert fields["Model"]["items"] == ["b.pt", "sam2.1_hiera_small.pt"]
    assert fields["Model"]["default"] == "sam2.1_hiera_small.pt"
    assert fields["Delete original annotations"]["default"] is False
    assert (fields["Padding"]["min"], fields["Padding"]["max"], fields["Padding"]["default"]) == (-20, 20, 0)
    assert fields["Padding"]["unit"] == "Pixels"
    assert (fields["Smoothing"]["min"], fields["Smoothing"]["max"], fields["Smoothing"]["default"]) == (0, 3, 0.7)
    assert "all" in fields["Batch XY"]["vueAttrs"]["placeholder"]
    assert fields["Resolution"]["default"] == "Auto"
    assert fields["Doubtful refinements"]["items"] == ["Tag for review", "Accept anyway", "Skip"]
    assert fields["Doubtful refinements"]["default"] == "Tag for review"
    assert fields["Allow overlapping outlines"]["default"] is False
    assert all(spec.get("tooltip") for name, spec in fields.items() if spec["type"] != "notes")


def test_default_model_falls_back_to_the_first():
    assert ui.build_interface(["a.pt", "z.pt"])["Model"]["default"] == "a.pt"


def test_checkpoints_are_listed_from_the_directory(tmp_path, monkeypatch):
    (tmp_path / "sam2.1_hiera_tiny.pt").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "custom.pt").write_bytes(b"x")
    monkeypatch.setenv(ui.CHECKPOINT_DIR_VARIABLE, str(tmp_path))
    assert ui.available_checkpoints() == ["custom.pt", "sam2.1_hiera_tiny.pt"]


@pytest.mark.parametrize("exists", [True, False])
def test_no_checkpoints_is_an_error_naming_the_variable(tmp_path, monkeypatch, exists):
    directory = tmp_path / "models"
    if exists:
        directory.mkdir()
    monkeypatch.setenv(ui.CHECKPOINT_DIR_VARIABLE, str(directory))
    with pytest.raises(WorkerError) as caught:
        ui.available_checkpoints()
    assert ui.CHECKPOINT_DIR_VARIABLE in caught.value.info
