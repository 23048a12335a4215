"""Refined polygons settled in an outline process come back with their platform coordinates
encoded (coordinates_json.py): the document saved for such a polygon carries the same JSON
as one made in the worker's own process, and a polygon changed afterwards (a new object)
is encoded anew."""

from __future__ import annotations

import gc
import pickle

import orjson
from shapely.geometry import Point

from sam2_refine import coordinates_json
from sam2_refine.creates import refined_document
from sam2_refine.engine import Settled
from sam2_refine.geometry import finish_outline, polygon_to_coordinates
from sam2_refine.nimbus_transport import json_body
from sam2_refine.outcome import Outcome
from sam2_refine.outlines import SettledChunk
from tests.fake_platform import FakePlatform
from tests.writeback_jobs import parameters


def test_a_settled_polygon_is_saved_with_the_coordinates_encoded_where_it_was_settled():
    polygons = [finish_outline(Point(40 + 30 * i, 50).buffer(9 + i, quad_segs=16), 0.7, 1.0) for i in range(5)]
    chunk = SettledChunk([Settled(k, Outcome(polygon), None) for k, polygon in enumerate(polygons)]
                         + [Settled(5, Outcome(None), None)])
    received = pickle.loads(pickle.dumps(chunk))  # as it crosses from an outline process
    platform = FakePlatform()
    original = platform.annotations[platform.add([(30, 40), (60, 40), (60, 70)], tags=["nucleus"])]
    params = parameters(platform)
    for sent, outcome in zip(polygons, received.outcomes):
        document = refined_document(original, outcome.polygon, params, "key")
        assert isinstance(document["coordinates"], orjson.Fragment)
        own = refined_document(original, sent, params, "key")  # made here: a list
        assert own["coordinates"] == polygon_to_coordinates(sent)
        assert json_body(document) == json_body(own)
        assert orjson.loads(json_body(document))["coordinates"] == polygon_to_coordinates(outcome.polygon)
    changed = received.outcomes[0].polygon.buffer(0.5)  # another polygon: encoded anew
    assert refined_document(original, changed, params, "key")["coordinates"] == polygon_to_coordinates(changed)
    before = len(coordinates_json._remembered)
    del received, document, outcome
    gc.collect()
    assert len(coordinates_json._remembered) <= before - 5  # the encodings go with their polygons
