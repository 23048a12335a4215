"""What makes a refined polygon recognisably this job's: the run key and the marker.

The run key is a digest of the settings that shape the output; a refined polygon carries
`MARKER_KEY` = "<run key>/<original id>" (`marker`). Both stay byte for byte as earlier
releases wrote them, so that a later run recognises what an earlier one saved
(tests/test_writeback_order.py pins them).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

from .nimbus import MARKER_KEY
from .parameters import RefineParameters

# The tag the platform's "job date tag" option adds (PLATFORM.md §1a):
# "<image> job Y-M-D h:m:s UTC±N", fields not zero-padded.
JOB_DATE_TAG = re.compile(r"^.+ job \d{1,4}-\d{1,2}-\d{1,2} \d{1,2}:\d{1,2}:\d{1,2} UTC[+-]{0,2}\d+(?:\.\d+)?$")


def is_job_date_tag(tag: str) -> bool:
    return JOB_DATE_TAG.match(tag) is not None


def stable_output_tags(params: RefineParameters) -> tuple[str, ...]:
    """The output tags that are the same in every run: without the per-run job date tag."""
    return tuple(tag for tag in params.output_tags if not is_job_date_tag(tag))


def run_key(params: RefineParameters) -> str:
    """A digest of the settings that shape the output: runs with the same key make the
    same refined polygons, so a later run recognises what an earlier one saved. Allowing
    overlaps counts only when ticked: the default keeps the key runs had before it existed."""
    settings = {
        "model": params.model_name,
        "resolution": params.resolution,
        "padding": params.padding,
        "smoothing": params.smoothing,
        "tags": sorted(stable_output_tags(params)),
        "channel": params.output_channel,
    }
    if params.allow_overlaps:  # absent by default, so runs made before the field existed keep their key
        settings["overlaps"] = True
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def marker(key: str, original_id: str) -> str:
    return f"{key}/{original_id}"


def marked_source(marker: str | None, key: str) -> str | None:
    """The original id a marker of run `key` names; None for no marker or another run's."""
    prefix = f"{key}/"
    return marker[len(prefix):] if marker is not None and marker.startswith(prefix) else None


def is_output_of(document: Mapping, key: str) -> bool:
    return marked_source(str(document.get(MARKER_KEY, "")), key) is not None


def source_of(document: Mapping) -> str:
    """The original id in the marker of a refined document this job made."""
    return str(document[MARKER_KEY]).split("/", 1)[1]
