"""Write-back jobs against the in-memory platform (`tests/fake_platform.py`): the
parameters, shapes and steps the write-back unit tests share."""

from __future__ import annotations

import pytest
from shapely.geometry import Polygon, box

from sam2_refine import interface as ui
from sam2_refine import nimbus
from sam2_refine.parameters import ConnectTo, Location, RefineParameters
from sam2_refine.creates import Refined
from sam2_refine.markers import run_key
from sam2_refine.resume import read_job
from sam2_refine.writeback import WriteBack

HERE = Location(0, 0, 0)
WRITES = ("create_annotations", "create_connections", "delete_connections", "delete_annotations")


class Silent:
    """A reporter that keeps the warnings and drops the rest."""

    def __init__(self):
        self.warnings = []

    def warning(self, message, info=None):
        self.warnings.append((message, info))

    def log(self, text):
        pass

    def progress(self, *args, **kwargs):
        pass


@pytest.fixture(autouse=True)
def fault_test_budget(monkeypatch):
    """The budget of the fault test: 1 s timeout (so 1 s to settle), 6 s of retries."""
    monkeypatch.setattr(nimbus, "HTTP_TIMEOUT", 1.0)
    monkeypatch.setattr(nimbus, "RETRY_SECONDS", 6.0)


def parameters(platform, *, replace=True, output_tags=("refined",), connect=None, connect_channel=None,
               **changes) -> RefineParameters:
    values = dict(
        image="img", dataset_id=platform.dataset_id, refine_tags=("nucleus",), output_tags=tuple(output_tags),
        output_channel=1, model_name="m.pt", checkpoint_path=None, resolution=ui.RESOLUTION_AUTO,
        delete_originals=replace, padding=0.0, smoothing=0.7, tile=HERE, batch_text={},
        connect_to=ConnectTo(tuple(connect), connect_channel) if connect else None,
    )
    values.update(changes)
    return RefineParameters(**values)


def square(x, y, side=10):
    return [(x, y), (x + side, y), (x + side, y + side), (x, y + side)]


def stale_refinement_of_an_edited_original(platform, params) -> tuple[str, str]:
    """An original and the refinement an earlier run made of it, the original's outline
    edited since (its digest no longer matches): (original id, stale refinement id)."""
    original = platform.add(square(10, 10, 20), tags=["nucleus"])
    old_digest = nimbus.outline_digest("polygon", platform.annotations[original]["coordinates"])
    stale = platform.add(square(11, 11, 18), tags=["refined"],
                         **{nimbus.MARKER_KEY: f"{run_key(params)}/{original}", nimbus.SOURCE_KEY: old_digest})
    platform.annotations[original]["coordinates"] = [{"x": x, "y": y} for x, y in square(40, 40, 20)]  # edited
    return original, stale


def writer_for(platform, params, locations=(HERE,)):
    """A prepared WriteBack for `params` and the job it read: (writer, job)."""
    key = run_key(params)
    job = read_job(platform, params, key, list(locations))
    writer = WriteBack(platform, params, key, Silent(), clock=platform.clock)
    writer.prepare(job)
    return writer, job


def inner(original_id, platform):
    """An outline a little inside the original: an accepted refinement of it."""
    x0, y0, x1, y1 = Polygon([(c["x"], c["y"]) for c in platform.annotations[original_id]["coordinates"]]).bounds
    return box(x0 + 1, y0 + 1, x1 - 1, y1 - 1)


def refine_all(platform, writer, originals, doubtful=(), location=HERE):
    refined = [Refined(platform.annotations[o], inner(o, platform), o in doubtful) for o in originals]
    writer.write_location(location, refined)


def complete_earlier(platform, writer, job, originals, location=HERE):
    """Write back a location whose originals an earlier run already refined."""
    writer.write_location(location, [], [(platform.annotations[o], job.earlier.counterparts[o]) for o in originals])


def only_refined(platform, original):
    (refined,) = platform.refined_of(original)
    return refined


def write_calls(platform) -> list[str]:
    return [call for call in platform.calls if call in WRITES]


def check_replaced_exactly_once(platform, originals):
    for original in originals:
        assert original not in platform.annotations
        assert len(platform.refined_of(original)) == 1, original
