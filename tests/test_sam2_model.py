"""The SAM2 side of the seam, with the real sam2 package and a random-init tiny checkpoint."""

import shutil

import numpy as np
import pytest

from sam2_refine.engine import resize_region
from sam2_refine.errors import WorkerError
from sam2_refine.model import Sam2Predictor, Window, config_for_checkpoint
from tests.conftest import TINY


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint_dir):
    return Sam2Predictor(tiny_checkpoint_dir / TINY, device="cpu")


def test_batched_low_res_decoding_matches_sam2s_own_predictor(predictor, tiny_checkpoint_dir):
    """Our loading, pre-processing and batched decoding against sam2's own build and predictor."""
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    rng = np.random.default_rng(0)
    image = rng.random((300, 500, 3), dtype=np.float32)
    boxes = np.array([[10, 20, 90, 110], [200, 50, 260, 140], [400.5, 200.5, 480, 290], [0, 0, 500, 300],
                      [120, 150, 180, 210]], np.float32)
    predictor.encode(image, Window(0, 0, 500, 300))
    ours = predictor.decode_low_res(boxes)
    assert ours.shape == (5, 256, 256)

    reference = SAM2ImagePredictor(
        build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", str(tiny_checkpoint_dir / TINY), device="cpu")
    )
    reference.set_image(image)
    for box, low_res in zip(boxes, ours):
        logits, _, _ = reference.predict(box=box, multimask_output=False, return_logits=True)
        region = (0, 0, 500, 300)
        np.testing.assert_allclose(resize_region(low_res, 300, 500, region), logits[0], atol=2e-3)


def test_official_names_map_to_packaged_configs(tmp_path):
    assert config_for_checkpoint(tmp_path / "sam2.1_hiera_base_plus.pt") == "configs/sam2.1/sam2.1_hiera_b+.yaml"


def test_custom_checkpoint_loads_with_the_config_beside_it(tiny_checkpoint_dir, tmp_path):
    import sam2

    custom = tmp_path / "cells_finetuned.pt"
    shutil.copy(tiny_checkpoint_dir / TINY, custom)
    shutil.copy(f"{sam2.__path__[0]}/configs/sam2.1/sam2.1_hiera_t.yaml", tmp_path / "cells_finetuned.yaml")
    loaded = Sam2Predictor(custom, device="cpu")
    loaded.encode(np.zeros((64, 64, 3), np.float32), Window(0, 0, 64, 64))
    assert loaded.decode_low_res(np.array([[8, 8, 40, 40]], np.float32)).shape == (1, 256, 256)


def test_custom_checkpoint_without_config_is_a_clear_error(tmp_path):
    (tmp_path / "mystery.pt").write_bytes(b"x")
    with pytest.raises(WorkerError) as caught:
        Sam2Predictor(tmp_path / "mystery.pt", device="cpu")
    assert "mystery.yaml" in caught.value.info


def test_truncated_checkpoint_names_the_file(tiny_checkpoint_dir, tmp_path):
    truncated = tmp_path / TINY
    truncated.write_bytes((tiny_checkpoint_dir / TINY).read_bytes()[:100_000])
    with pytest.raises(WorkerError) as caught:
        Sam2Predictor(truncated, device="cpu")
    assert TINY in caught.value.message
