"""mask_to_polygon on masks with known answers: outlines follow pixel edges exactly."""

import numpy as np
import pytest
from shapely.geometry import Polygon, box

from sam2_refine.geometry import clip_to_image, mask_to_polygon, polygon_to_coordinates


def block(height=40, width=40, rows=(5, 25), cols=(10, 30)):
    mask = np.zeros((height, width), bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def disk(radius, size=80, centre=(40, 40)):
    rows, cols = np.mgrid[:size, :size]
    return (rows + 0.5 - centre[1]) ** 2 + (cols + 0.5 - centre[0]) ** 2 < radius**2


def test_block_becomes_its_exact_square():
    polygon = mask_to_polygon(block(), smoothing=0, padding=0)
    assert polygon.area == 400
    assert polygon.bounds == (10, 5, 30, 25)
    assert polygon.equals(box(10, 5, 30, 25))
    assert len(polygon.exterior.coords) == 5  # four corners, closed ring


def test_offset_places_pixel_zero_at_the_given_point():
    polygon = mask_to_polygon(block(), smoothing=0, padding=0, offset=(100.0, 200.0))
    assert polygon.bounds == (110, 205, 130, 225)


def test_single_pixel_is_the_unit_square():
    mask = np.zeros((3, 3), bool)
    mask[1, 2] = True
    assert mask_to_polygon(mask, 0, 0).equals(box(2, 1, 3, 2))


def test_disk_area_equals_pixel_count():
    mask = disk(20)
    polygon = mask_to_polygon(mask, smoothing=0, padding=0)
    assert polygon.is_valid
    assert polygon.area == mask.sum()


def test_holes_are_filled():
    mask = block()
    mask[10:15, 15:20] = False
    polygon = mask_to_polygon(mask, 0, 0)
    assert len(polygon.interiors) == 0
    assert polygon.area == 400


def test_largest_piece_is_kept():
    mask = np.zeros((40, 40), bool)
    mask[0:5, 0:5] = True
    mask[10:30, 10:30] = True
    assert mask_to_polygon(mask, 0, 0).equals(box(10, 10, 30, 30))


def test_pieces_touching_only_at_a_corner_are_separate():
    mask = np.zeros((6, 6), bool)
    mask[1:3, 1:3] = True  # 4 pixels
    mask[3, 3] = True      # touches at the corner (3, 3) only
    polygon = mask_to_polygon(mask, 0, 0)
    assert polygon.is_valid and polygon.equals(box(1, 1, 3, 3))


def test_positive_padding_grows_a_square_by_that_many_pixels():
    polygon = mask_to_polygon(block(), smoothing=0, padding=2)
    assert polygon.bounds == (8, 3, 32, 27)
    assert polygon.area == pytest.approx(24 * 24)


def test_negative_padding_shrinks():
    polygon = mask_to_polygon(block(), smoothing=0, padding=-3)
    assert polygon.bounds == (13, 8, 27, 22)
    assert polygon.area == pytest.approx(14 * 14)


def test_padding_that_eats_everything_gives_none():
    assert mask_to_polygon(block(rows=(5, 9), cols=(5, 9)), smoothing=0, padding=-3) is None


def test_empty_mask_gives_none():
    assert mask_to_polygon(np.zeros((10, 10), bool), 0.7, 0) is None


def test_smoothing_simplifies_within_tolerance():
    mask = disk(25)
    exact = mask_to_polygon(mask, smoothing=0, padding=0)
    smooth = mask_to_polygon(mask, smoothing=1.0, padding=0)
    assert len(smooth.exterior.coords) < len(exact.exterior.coords) / 2
    # Every smoothed vertex stays within the tolerance of the exact outline.
    assert exact.exterior.hausdorff_distance(smooth.exterior) <= 1.0 + 1e-9
    assert abs(smooth.area - exact.area) / exact.area < 0.02


def test_smoothing_keeps_a_square_exact():
    assert mask_to_polygon(block(), smoothing=3, padding=0).equals(box(10, 5, 30, 25))


def test_coordinates_are_open_and_plain_floats():
    coordinates = polygon_to_coordinates(mask_to_polygon(block(), 0, 0))
    assert len(coordinates) == 4
    assert coordinates[0] != coordinates[-1]
    assert all(type(c["x"]) is float and type(c["y"]) is float for c in coordinates)


def test_clip_to_image_keeps_the_inside_part():
    clipped = clip_to_image(Polygon([(-5, -5), (10, -5), (10, 10), (-5, 10)]), width=8, height=20)
    assert clipped.equals(box(0, 0, 8, 10))
    assert clip_to_image(box(30, 30, 40, 40), width=20, height=20) is None
