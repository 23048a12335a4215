"""bf16 autocast on the CPU only where the CPU computes bfloat16 natively, decided at run time."""

from pathlib import Path

import numpy as np
import pytest

from sam2_refine.model import Sam2Predictor

from sam2_refine.sam2_build import choose_precision, native_bf16_flags

from sam2_refine.seam import Window
from tests.conftest import TINY

SAPPHIRE_RAPIDS = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
COOPER_LAKE = "flags\t\t: fpu avx2 avx512f avx512_bf16\n"
ZEN3 = "flags\t\t: fpu sse4_2 avx avx2 fma\n"
ARM = "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n"


def cpuinfo(tmp_path: Path, flags_line: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\n{flags_line}\nprocessor\t: 1\n{flags_line}")
    return path


@pytest.mark.parametrize(("flags_line", "expected"), [
    (SAPPHIRE_RAPIDS, ["avx512_bf16", "amx_bf16"]), (COOPER_LAKE, ["avx512_bf16"]), (ZEN3, []), (ARM, []),
])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags_line, expected):
    assert native_bf16_flags(cpuinfo(tmp_path, flags_line)) == expected


def test_precision_by_device_and_cpu(tmp_path):
    assert choose_precision("cpu", cpuinfo(tmp_path, SAPPHIRE_RAPIDS)) == "bf16"
    assert choose_precision("cpu", cpuinfo(tmp_path, ZEN3)) == "fp32"
    assert choose_precision("cpu", tmp_path / "no-such-file") == "fp32"  # macOS, Windows
    assert choose_precision("cuda", cpuinfo(tmp_path, ZEN3)) == "bf16"
    assert choose_precision("mps", cpuinfo(tmp_path, SAPPHIRE_RAPIDS)) == "fp32"


def test_the_predictor_names_its_device_and_precision(tiny_checkpoint_dir):
    automatic = Sam2Predictor(tiny_checkpoint_dir / TINY, device="cpu")
    assert automatic.precision == choose_precision("cpu")
    assert automatic.device_description.startswith("CPU, ")
    if automatic.precision == "bf16":
        assert "bf16" in automatic.device_description and native_bf16_flags()[0] in automatic.device_description
    else:
        assert automatic.device_description.endswith("fp32")
    assert automatic.device_warning is None
    forced = Sam2Predictor(tiny_checkpoint_dir / TINY, device="cpu", precision="fp32")
    assert forced.device_description.endswith(", fp32")


@pytest.mark.skipif(not native_bf16_flags(), reason="emulated bf16 takes minutes per encode on this CPU")
def test_bf16_masks_agree_with_fp32(tiny_checkpoint_dir):
    """Thresholded masks over each box's surroundings: bf16 against fp32 (random-init
    weights: noise masks, boundaries everywhere, the harshest case for agreement)."""
    image = np.random.default_rng(4).random((400, 400, 3), dtype=np.float32)
    boxes = np.array([[40, 40, 120, 110], [200, 180, 260, 250], [300, 30, 390, 100]], np.float32)
    areas = np.array([[20, 20, 140, 130], [180, 160, 280, 270], [280, 10, 400, 120]])
    masks = {}
    for precision in ("fp32", "bf16"):
        predictor = Sam2Predictor(tiny_checkpoint_dir / TINY, device="cpu", precision=precision)
        predictor.encode(image, Window(0, 0, 400, 400))
        logits = predictor.decode(boxes, areas).logits
        masks[precision] = [logits[k, a[1] * 256 // 400:a[3] * 256 // 400, a[0] * 256 // 400:a[2] * 256 // 400] > 0
                            for k, a in enumerate(areas)]
    for fp32, bf16 in zip(masks["fp32"], masks["bf16"]):
        assert (fp32 & bf16).sum() / (fp32 | bf16).sum() >= 0.98
