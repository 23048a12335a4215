"""Fields and masks to polygons, on inputs with known answers.

A field is sampled at pixel centres (pixel (r, c) is the square [c, c+1] x [r, r+1]) and
the outline is its zero crossing; a binary mask is the field +0.5 / -0.5, whose crossing
runs along the pixel edges with each convex corner cut by a half-pixel diagonal.
"""

import math

import numpy as np
import pytest
import shapely
from shapely.geometry import Point, Polygon, box

from sam2_refine.geometry import (
    clip_to_image, field_to_polygon, mask_to_polygon, polygon_to_coordinates, simplify_keeping_area,
)


def block(height=40, width=40, rows=(5, 25), cols=(10, 30)):
    mask = np.zeros((height, width), bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def disk(radius, size=80, centre=(40, 40)):
    rows, cols = np.mgrid[:size, :size]
    return (rows + 0.5 - centre[1]) ** 2 + (cols + 0.5 - centre[0]) ** 2 < radius**2


def disk_field(radius, size=80, centre=(40.0, 40.0)):
    """Signed distance to a circle, sampled at pixel centres: its zero set is the circle."""
    rows, cols = np.mgrid[:size, :size]
    return radius - np.hypot(cols + 0.5 - centre[0], rows + 0.5 - centre[1])


def vertex_distances(polygon, outline):
    return np.array([outline.exterior.distance(Point(p)) for p in polygon.exterior.coords])


def test_block_follows_the_pixel_edges_with_half_pixel_corner_cuts():
    polygon = mask_to_polygon(block(), smoothing=0, padding=0)
    assert polygon.bounds == (10, 5, 30, 25)  # no half-pixel shift
    assert polygon.area == 400 - 4 * 0.125
    assert len(polygon.exterior.coords) == 9  # 4 sides + 4 corner cuts, closed ring
    assert polygon.hausdorff_distance(box(10, 5, 30, 25)) == pytest.approx(math.sqrt(2) / 4)


def test_offset_places_pixel_zero_at_the_given_point():
    polygon = mask_to_polygon(block(), smoothing=0, padding=0, offset=(100.0, 200.0))
    assert polygon.bounds == (110, 205, 130, 225)


def test_single_pixel_is_the_diamond_through_its_edge_midpoints():
    mask = np.zeros((3, 3), bool)
    mask[1, 1] = True
    assert mask_to_polygon(mask, 0, 0).equals(Polygon([(1.5, 1), (2, 1.5), (1.5, 2), (1, 1.5)]))


def test_piece_on_the_mask_edge_is_cut_along_that_edge():
    mask = np.zeros((3, 3), bool)
    mask[1, 2] = True  # on the right edge
    polygon = mask_to_polygon(mask, 0, 0)
    # As if the field went on beyond the edge with its edge values: cut there, not closed.
    assert polygon.bounds == (2, 1, 3, 2)
    assert polygon.area == pytest.approx(1 - 2 * 0.125)


def test_disk_area_is_the_pixel_count_less_half_a_pixel_and_perimeter_is_not_a_staircase():
    mask = disk(20)
    polygon = mask_to_polygon(mask, smoothing=0, padding=0)
    assert polygon.is_valid
    assert polygon.area == pytest.approx(mask.sum() - 0.5)
    # A pixel-edge staircase would be 4/pi = 27 % too long.
    assert polygon.length == pytest.approx(2 * math.pi * 20, rel=0.06)
    # The remaining half-pixel zigzag lies in a band about 0.7 px wide: smoothing 1.5 removes it.
    assert mask_to_polygon(mask, smoothing=1.5, padding=0).length == pytest.approx(2 * math.pi * 20, rel=0.025)


def test_holes_are_filled():
    mask = block()
    mask[10:15, 15:20] = False
    polygon = mask_to_polygon(mask, 0, 0)
    assert len(polygon.interiors) == 0
    assert polygon.area == 399.5


def test_largest_piece_is_kept():
    mask = np.zeros((40, 40), bool)
    mask[0:5, 0:5] = True
    mask[10:30, 10:30] = True
    assert mask_to_polygon(mask, 0, 0).bounds == (10, 10, 30, 30)


def test_pieces_touching_only_at_a_corner_are_separate():
    mask = np.zeros((6, 6), bool)
    mask[1:3, 1:3] = True  # 4 pixels
    mask[3, 3] = True      # touches at the corner (3, 3) only
    polygon = mask_to_polygon(mask, 0, 0)
    assert polygon.is_valid and polygon.bounds == (1, 1, 3, 3) and polygon.area == 3.5


def test_field_outline_lies_on_the_zero_crossing_between_pixel_centres():
    rows, cols = np.mgrid[:20, :30]
    field = 10.3 - np.abs(cols + 0.5 - 15.0)  # inside for 4.7 < x < 25.3, every row
    field = np.minimum(field, 6.2 - np.abs(rows + 0.5 - 10.0))  # and 3.8 < y < 16.2
    polygon = field_to_polygon(field, smoothing=0, padding=0, offset=(100.0, 50.0))
    np.testing.assert_allclose(polygon.bounds, (104.7, 53.8, 125.3, 66.2), atol=1e-9)


def test_field_of_a_circle_gives_the_circle():
    polygon = field_to_polygon(disk_field(20.0), smoothing=0, padding=0)
    truth = Point(40, 40).buffer(20, quad_segs=256)
    assert polygon.area == pytest.approx(truth.area, rel=1e-3)
    assert polygon.length == pytest.approx(truth.length, rel=1e-3)
    assert polygon.hausdorff_distance(truth) < 0.05


def test_field_reaching_its_edge_is_cut_on_the_edge():
    field = disk_field(20.0, size=50, centre=(45.0, 25.0))  # the circle runs past the right edge x = 50
    polygon = field_to_polygon(field, smoothing=0, padding=0)
    assert polygon.bounds[2] == 50
    truth = Point(45, 25).buffer(20, quad_segs=256).intersection(box(0, 0, 50, 50))
    assert polygon.symmetric_difference(truth).area < 0.01 * truth.area


def test_field_keeps_the_largest_piece_without_its_holes():
    field = np.maximum(disk_field(15.0), disk_field(4.0, centre=(70.0, 70.0)))
    field = np.where(disk_field(5.0) > 0, -1.0, field)  # a hole in the big disk
    polygon = field_to_polygon(field, smoothing=0, padding=0)
    assert not polygon.interiors
    assert polygon.area == pytest.approx(math.pi * 15**2, rel=2e-3)


def test_positive_padding_is_a_true_offset_with_round_corners():
    outline = mask_to_polygon(block(), smoothing=0, padding=0)
    polygon = mask_to_polygon(block(), smoothing=0, padding=2)
    assert polygon.bounds == (8, 3, 32, 27)
    np.testing.assert_allclose(vertex_distances(polygon, outline), 2.0, atol=1e-9)
    # A mitred square would add 4 x 2² = 16 px² of corners beyond the true offset.
    assert polygon.area == pytest.approx(outline.area + 2 * outline.length + math.pi * 4, rel=2e-3)


def test_negative_padding_shrinks_by_that_distance():
    outline = mask_to_polygon(block(), smoothing=0, padding=0)
    polygon = mask_to_polygon(block(), smoothing=0, padding=-3)
    assert polygon.bounds == (13, 8, 27, 22)
    assert vertex_distances(polygon, outline).min() == pytest.approx(3.0)


def test_padding_that_eats_everything_gives_none():
    assert mask_to_polygon(block(rows=(5, 9), cols=(5, 9)), smoothing=0, padding=-3) is None


def test_empty_mask_gives_none():
    assert mask_to_polygon(np.zeros((10, 10), bool), 0.7, 0) is None
    assert field_to_polygon(np.full((10, 10), -1.0), 0.7, 0) is None


@pytest.mark.parametrize("smoothing", [0.3, 0.7, 1.5, 3.0])
def test_smoothing_stays_within_half_its_value_of_the_outline_without_shrinking(smoothing):
    field = disk_field(12.0, size=40, centre=(20.0, 20.0))
    exact = field_to_polygon(field, smoothing=0, padding=0)
    smooth = field_to_polygon(field, smoothing=smoothing, padding=0)
    plain = exact.simplify(smoothing / 2)  # Douglas-Peucker alone cuts every bulge inward
    assert len(smooth.exterior.coords) <= len(plain.exterior.coords) < len(exact.exterior.coords) / 2
    assert plain.area < exact.area * (1 - 0.1 * smoothing / 12)
    assert smooth.area == pytest.approx(exact.area, rel=1e-6)
    assert shapely.hausdorff_distance(exact, smooth, densify=0.01) <= smoothing / 2


def test_smoothing_keeps_few_vertices_per_pixel_of_outline():
    # Cells under about 20 px across keep more (a 12-px cell 0.42 per pixel, 16 vertices).
    for radius in (10.0, 15.0, 30.0):
        polygon = field_to_polygon(disk_field(radius, size=70, centre=(35.0, 35.0)), smoothing=0.7, padding=0)
        assert (len(polygon.exterior.coords) - 1) / polygon.length <= 0.3, radius
        assert polygon.length == pytest.approx(2 * math.pi * radius, rel=0.01)


def test_smoothing_keeps_area_on_concave_outlines():
    angles = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    radius = 20 * (1 + 0.3 * np.cos(5 * angles))
    star = Polygon(np.column_stack([50 + radius * np.cos(angles), 50 + radius * np.sin(angles)]))
    smooth = simplify_keeping_area(star, 0.5)
    assert smooth.is_valid and smooth.area == pytest.approx(star.area, rel=1e-6)
    assert len(smooth.exterior.coords) < 80
    # Within the band, give or take the area correction, which moves every edge alike.
    assert shapely.hausdorff_distance(star, smooth, densify=0.01) <= 0.5 * 1.1


def test_coordinates_are_open_and_plain_floats():
    coordinates = polygon_to_coordinates(mask_to_polygon(block(), 0, 0))
    assert len(coordinates) == 8
    assert coordinates[0] != coordinates[-1]
    assert all(type(c["x"]) is float and type(c["y"]) is float for c in coordinates)


def test_clip_to_image_keeps_the_inside_part():
    clipped = clip_to_image(Polygon([(-5, -5), (10, -5), (10, 10), (-5, 10)]), width=8, height=20)
    assert clipped.equals(box(0, 0, 8, 10))
    assert clip_to_image(box(30, 30, 40, 40), width=20, height=20) is None
    assert shapely.is_valid(clipped)


def test_the_outer_ring_is_the_one_skimage_traces_with_low_values_connected():
    """geometry.outer_ring against skimage.measure.find_contours(fully_connected="low") on
    noisy fields (saddles, holes, ragged pieces): the same vertices, around the same area."""
    from scipy import ndimage
    from shapely.geometry import Polygon
    from skimage.measure import find_contours

    from sam2_refine.geometry import outer_ring

    rng = np.random.default_rng(1)
    saddles = 0
    for trial in range(300):
        n = int(rng.integers(5, 60))
        rows, cols = np.mgrid[:n, :n]
        field = n / 3 - np.hypot(cols - n / 2 + rng.normal(0, 2), rows - n / 2) \
            + rng.normal(0, (0, 0.5, 2.0, 5.0)[trial % 4], (n, n))
        labels, count = ndimage.label(field > 0)
        if count == 0:
            continue
        piece = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
        values = np.full((n + 2, n + 2), -1.0)
        values[1:-1, 1:-1] = np.where(piece, field, np.minimum(field, -1e-6))
        above = values > 0
        cases = above[:-1, :-1] + 2 * above[:-1, 1:] + 4 * above[1:, :-1] + 8 * above[1:, 1:]
        saddles += int(((cases == 6) | (cases == 9)).sum())
        expected = max(find_contours(values, 0.0, fully_connected="low"), key=lambda ring: Polygon(ring).area)
        ring_rows, ring_cols = outer_ring(values)
        assert len(ring_rows) == len(expected)
        assert set(zip(np.round(ring_rows, 9), np.round(ring_cols, 9))) == set(map(tuple, np.round(expected, 9)))
        assert Polygon(np.column_stack([ring_rows, ring_cols])).area == pytest.approx(Polygon(expected).area, rel=1e-12)
    assert saddles > 100
