"""The SAM2 side of the seam, with the real sam2 package and a random-init tiny checkpoint."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from sam2_refine.engine import resize_region
from sam2_refine.errors import WorkerError
from sam2_refine.model import Sam2Predictor
from sam2_refine.sam2_build import config_for_checkpoint
from sam2_refine.seam import Window
from tests.conftest import TINY


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint_dir):
    return Sam2Predictor(tiny_checkpoint_dir / TINY, device="cpu", precision="fp32")


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


def test_custom_checkpoint_decodes_like_the_official_one(predictor, tiny_checkpoint_dir, tmp_path):
    """A fine-tuned `name.pt` with its `name.yaml` gets build_sam2's post-processing
    (SAM2's fallback to its best multi-mask output when the single mask is unstable), so
    the same weights give the same masks under either name."""
    import sam2

    custom = tmp_path / "cells_finetuned.pt"
    shutil.copy(tiny_checkpoint_dir / TINY, custom)
    shutil.copy(f"{sam2.__path__[0]}/configs/sam2.1/sam2.1_hiera_t.yaml", tmp_path / "cells_finetuned.yaml")
    loaded = Sam2Predictor(custom, device="cpu", precision="fp32")
    decoder, official = loaded.model.sam_mask_decoder, predictor.model.sam_mask_decoder
    assert decoder.dynamic_multimask_via_stability and official.dynamic_multimask_via_stability
    assert decoder.dynamic_multimask_stability_delta == official.dynamic_multimask_stability_delta == 0.05
    assert decoder.dynamic_multimask_stability_thresh == official.dynamic_multimask_stability_thresh == 0.98
    image = np.random.default_rng(2).random((200, 200, 3), dtype=np.float32)
    boxes = np.array([[20, 30, 90, 120], [100, 100, 190, 180]], np.float32)
    for model in (loaded, predictor):
        model.encode(image, Window(0, 0, 200, 200))
    np.testing.assert_array_equal(loaded.decode_low_res(boxes), predictor.decode_low_res(boxes))


def test_model_built_on_meta_equals_sam2s_own_build(predictor, tiny_checkpoint_dir):
    """Every parameter and buffer, and the tensors sam2 computes at construction without
    saving them (the memory attention's rotary encodings), equal build_sam2's."""
    import torch
    from sam2.build_sam import build_sam2

    reference = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", str(tiny_checkpoint_dir / TINY), device="cpu")
    ours = predictor.model
    assert ours.state_dict().keys() == reference.state_dict().keys()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name
    for (name, module), (_, theirs) in zip(ours.named_modules(), reference.named_modules()):
        for attribute, value in vars(theirs).items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(getattr(module, attribute), value), f"{name}.{attribute}"
    assert not any(t.is_meta for t in [*ours.parameters(), *ours.buffers()])


# Builds our predictor, then sam2's own random-init model, in a fresh interpreter, and
# prints a digest of the latter's parameters; with OURS=0 it skips our predictor.
LEAK_PROBE = """
import json, os, sys, torch
from pathlib import Path
sys.path.insert(0, os.environ["REPO"])
from sam2.build_sam import build_sam2
if os.environ["OURS"] == "1":
    from sam2_refine.model import Sam2Predictor
    Sam2Predictor(Path(os.environ["CHECKPOINT"]), device="cpu")
torch.manual_seed(0)
model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
print(json.dumps({name: float(p.double().abs().sum()) for name, p in model.named_parameters()}))
"""


def test_building_the_predictor_leaves_sam2s_own_initialisation_intact(tiny_checkpoint_dir):
    """A later build_sam2 in the same process initialises as if ours had never run."""
    from tests.conftest import REPO

    def digest(ours: str) -> dict:
        env = {"REPO": str(REPO), "OURS": ours, "CHECKPOINT": str(tiny_checkpoint_dir / TINY), "PATH": ""}
        done = subprocess.run([sys.executable, "-c", LEAK_PROBE], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])

    after_ours, alone = digest("1"), digest("0")
    assert alone["maskmem_tpos_enc"] > 0
    assert after_ours == alone


def test_custom_checkpoint_without_config_is_a_clear_error(tmp_path):
    (tmp_path / "mystery.pt").write_bytes(b"x")
    with pytest.raises(WorkerError) as caught:
        Sam2Predictor(tmp_path / "mystery.pt", device="cpu")
    assert "mystery.yaml" in caught.value.info


def test_truncated_checkpoint_names_the_file(tiny_checkpoint_dir, tmp_path):
    truncated = tmp_path / TINY
    truncated.write_bytes((tiny_checkpoint_dir / TINY).read_bytes()[:100_000])
    with pytest.raises(WorkerError, match="could not be loaded") as caught:
        Sam2Predictor(truncated, device="cpu")
    assert TINY in caught.value.message


def test_the_cpu_thread_count_applies_where_the_predictor_computes(tiny_checkpoint_dir, monkeypatch):
    """torch's thread count is per thread: a predictor built in a background thread (as the
    worker builds it) must still use the container's CPU count in the thread that encodes."""
    import threading

    import torch

    from sam2_refine import device

    monkeypatch.setattr(device, "usable_cpu_count", lambda *args, **kwargs: 1)
    built = []
    builder = threading.Thread(target=lambda: built.append(Sam2Predictor(tiny_checkpoint_dir / TINY, device="cpu")))
    builder.start()
    builder.join()
    before = torch.get_num_threads()
    if before == 1:
        pytest.skip("this machine has one CPU: nothing to tell apart")
    try:
        built[0].encode(np.zeros((64, 64, 3), np.float32), Window(0, 0, 64, 64))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
