"""Building SAM2: its config and weights, the device and precision it runs at, and the
fallback from a GPU that cannot hold or run it to the CPU.

`load` is the one entry point: it builds the model the checkpoint names on the device
`device.choose_device` picks, and says where and how it runs (`Sam2Model.description`,
`warning`). The model is constructed on the meta device and the checkpoint's tensors are
assigned to it (the same model sam2.build_sam.build_sam2 builds, without its random
initialisation). Nothing here imports torch until it is called.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from .errors import WorkerError

# Official checkpoint names -> their configs inside the sam2 package.
OFFICIAL_CONFIGS = {
    "sam2.1_hiera_tiny.pt": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small.pt": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus.pt": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large.pt": "configs/sam2.1/sam2.1_hiera_l.yaml",
    "sam2_hiera_tiny.pt": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_small.pt": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_base_plus.pt": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_large.pt": "configs/sam2/sam2_hiera_l.yaml",
}


def config_for_checkpoint(checkpoint: Path) -> str | Path:
    """The sam2 config name of an official checkpoint, or the `.yaml` beside a custom one."""
    if checkpoint.name in OFFICIAL_CONFIGS:
        return OFFICIAL_CONFIGS[checkpoint.name]
    beside = checkpoint.with_suffix(".yaml")
    if beside.is_file():
        return beside
    raise WorkerError(
        f"No config for model {checkpoint.name}",
        info=(
            f"Official names ({', '.join(sorted(OFFICIAL_CONFIGS))}) need nothing more; for another "
            f"checkpoint, put its SAM2 config beside it as {beside.name}."
        ),
        title="Unknown model",
    )


# What sam2.build_sam.build_sam2 applies to official configs (its apply_postprocessing);
# applied to custom `name.yaml` configs too, so fine-tuned checkpoints decode alike.
POSTPROCESSING = {
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
}
# /proc/cpuinfo flags of CPUs that compute in bfloat16 natively (AVX-512 BF16, AMX).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def native_bf16_flags(cpuinfo: Path = CPUINFO) -> list[str]:
    """The NATIVE_BF16_FLAGS this CPU reports; empty off x86 Linux, where autocast
    would emulate bfloat16 many times slower than fp32 (benchmarks/RESULTS.md)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    return []


def choose_precision(device_kind: str, cpuinfo: Path = CPUINFO) -> str:
    """"bf16" (autocast) on CUDA and on CPUs with native bfloat16, else "fp32"."""
    if device_kind == "cuda" or (device_kind == "cpu" and native_bf16_flags(cpuinfo)):
        return "bf16"
    return "fp32"


def _model_settings(config: str | Path):
    """The hydra settings of `config` (a packaged config name or a .yaml path), with POSTPROCESSING."""
    from hydra import compose
    from omegaconf import OmegaConf

    import sam2  # noqa: F401  (registers the packaged configs with hydra)

    if isinstance(config, str):
        overrides = [f"++{key}={str(value).lower()}" for key, value in POSTPROCESSING.items()]
        settings = compose(config_name=config, overrides=overrides)
    else:
        settings = OmegaConf.load(config)
        for key, value in POSTPROCESSING.items():
            OmegaConf.update(settings, key, value, force_add=True)
    OmegaConf.resolve(settings)
    return settings


def _meta_construction():
    """A torch function mode for building a model on the meta device.

    - Initialisers and in-place arithmetic on meta tensors do nothing, and a scalar times a
      meta tensor is a new meta tensor: the checkpoint replaces every parameter, and these
      ops on meta tensors would run torch's Python references, which import torch._dynamo
      (a second of start-up).
    - `arange` and `linspace` run on the CPU: sam2 reads drop-path rates from them with
      `.item()` and builds its rotary encodings, which no checkpoint holds, from them.
    - Meta tensors are not moved to another device (sam2 moves some to CUDA while building).
    """
    import torch
    from torch.overrides import TorchFunctionMode

    Tensor = torch.Tensor
    unchanged = {Tensor.normal_, Tensor.uniform_, Tensor.erfinv_, Tensor.mul_, Tensor.add_, Tensor.clamp_,
                 Tensor.fill_, Tensor.zero_, Tensor.to, Tensor.cuda}
    scaled = {Tensor.__mul__, Tensor.__rmul__, Tensor.mul, torch.mul}
    on_cpu = {torch.arange, torch.linspace}

    class MetaConstruction(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            subject = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes `tensor=`
            if isinstance(subject, Tensor) and subject.is_meta:
                if func in unchanged or getattr(func, "__module__", None) == "torch.nn.init":
                    return subject
                if func in scaled and len(args) == 2 and isinstance(args[1], (int, float)):
                    return torch.empty_like(subject)
            if func in on_cpu and kwargs.get("device") is None:
                kwargs = {**kwargs, "device": "cpu"}
            return func(*args, **kwargs)

    return MetaConstruction()


def _check_materialised(model) -> None:
    """Every parameter, buffer and tensor attribute holds data: none was left on meta."""
    import torch

    left_on_meta = [
        f"{module_name}.{name}" for module_name, module in model.named_modules()
        for name, value in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False),
                            *vars(module).items()]
        if isinstance(value, torch.Tensor) and value.is_meta
    ]
    if left_on_meta:
        raise RuntimeError(f"not in the checkpoint: {', '.join(left_on_meta)}")


def build_model(config: str | Path, checkpoint: Path, device: str):
    """The SAM2 model of `config` with the weights of `checkpoint` (the official format,
    {"model": state_dict}); the same model sam2.build_sam.build_sam2 builds. It is
    constructed on the meta device (no memory, no random initialisation) and the
    checkpoint's tensors are assigned to it."""
    import torch
    from hydra.utils import instantiate

    settings = _model_settings(config)
    with torch.device("meta"), _meta_construction():
        model = instantiate(settings.model, _recursive_=True)
    weights = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["model"]
    model.load_state_dict(weights, strict=True, assign=True)
    _check_materialised(model)
    return model.to(device).eval()


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is torch running out of (GPU) memory."""
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


def _gpu_failure(error: BaseException, checkpoint: Path) -> str:
    """Why the model runs on the CPU instead of the GPU, for the job's warning."""
    if is_out_of_memory(error):
        return (f"the GPU did not have the memory to load {checkpoint.name} ({error}); another job may be "
                "using it, or the model is too large for it")
    return f"the installed torch has no kernels for this GPU (it is older than the build supports): {error}"


@dataclass
class Sam2Model:
    """A built SAM2 model and how it runs: `device` (a torch device), `threads` (torch's CPU
    threads), `precision` ("bf16": autocast; "fp32"), `tf32` (TF32 matrix products on a CUDA
    GPU that has them), `description` and `warning` for the job's messages."""

    model: object
    device: str
    threads: int
    precision: str
    tf32: bool
    description: str
    warning: str | None

    @property
    def kind(self) -> str:
        """The device type: "cuda", "mps" or "cpu"."""
        return self.device.split(":")[0]

    def use_threads(self) -> None:
        """torch's CPU thread count is per calling thread (OpenMP), and the model may be
        built in one thread and used in another: set it in each that computes."""
        import torch

        if self.device == "cpu" and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def autocast(self, stage: str):
        """bf16 autocast for `stage` ("encode" or "decode") where it is chosen. On the CPU
        only the image encoder runs in bf16: the decoder is no faster in bf16 there
        (benchmarks/RESULTS.md) and stays exact in fp32."""
        import torch

        if self.precision != "bf16" or self.kind not in ("cuda", "cpu"):
            return nullcontext()
        if self.kind == "cpu" and stage == "decode":
            return nullcontext()
        return torch.autocast(self.kind, dtype=torch.bfloat16)


def load(checkpoint: Path, device: str | None = None, precision: str | None = None) -> Sam2Model:
    """SAM2 from `checkpoint` on `device` (None: the best there is) at `precision` (None:
    `choose_precision`'s). CUDA running out of memory while the model is built, or a GPU the
    installed torch has no kernels for, falls back to the CPU with a warning saying so."""
    import torch

    from . import device as devices

    choice = devices.choose_device(device)
    config = config_for_checkpoint(checkpoint)
    try:
        return _built(choice, precision, config, checkpoint)
    except WorkerError:
        raise
    except Exception as error:
        if not (choice.kind.startswith("cuda") and (is_out_of_memory(error) or devices.is_missing_kernel(error))):
            raise WorkerError(
                f"Model {checkpoint.name} could not be loaded: {type(error).__name__}: {error}",
                info="The checkpoint file may be truncated or not match its config; reinstall the model.",
                title="Model failed to load",
            ) from error
        fallback = choice.on_cpu(_gpu_failure(error, checkpoint))
    # Outside the handler: the failed attempt's tensors go with its traceback.
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return _built(fallback, precision, config, checkpoint)


def _built(choice, precision: str | None, config, checkpoint: Path) -> Sam2Model:
    import torch

    if choice.kind == "cpu":
        torch.set_num_threads(choice.threads)
    tf32 = choice.kind.startswith("cuda") and torch.cuda.get_device_properties(choice.kind).major >= 8
    if tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    precision = precision or choose_precision(choice.kind.split(":")[0])
    built = Sam2Model(None, choice.kind, choice.threads, precision, tf32, "", choice.warning)
    built.description = f"{choice.description}, {_precision_words(built)}"
    built.model = build_model(config, checkpoint, choice.kind)
    return built


def _precision_words(built: Sam2Model) -> str:
    if built.precision == "fp32":
        return "fp32"
    if built.device == "cpu":
        return f"image encoder in bf16 autocast ({', '.join(native_bf16_flags()) or 'emulated'}), mask decoder in fp32"
    return "bf16 autocast" + (", TF32" if built.tf32 else "")
