"""Where the LLM's layers go: accelerate's big-model inference, resolved and checked before any weight loads.

The keys (``placement_keys.py``): ``llm_device_map`` names a strategy (``auto``, ``balanced``,
``balanced_low_0``, ``sequential``), one device, or a map of module names to devices;
``max_memory`` caps what each device may hold; ``offload_folder`` lets modules go to disk. Devices are
accelerate's: a GPU index (or ``cuda:N``), ``cpu``, ``mps``, ``disk``. Beside a GPU, accelerate keeps
``cpu`` and ``disk`` modules *offloaded*: stored there and run on the first GPU of the map, their weights
streamed in for each forward. On a machine without GPUs everything runs on the CPU and ``disk`` modules
stream their weights from the folder.

The request is resolved on an empty (meta) copy of the model built from its config, so a device that
does not exist, a map that misses modules, or memory that cannot hold the model fails with one line
before any weight is read. The model then loads with the resolved map, so what was checked is what
loads: through transformers' ``from_pretrained`` (accelerate's dispatch; its hooks move activations
where layers change device), or, for a model already in memory (the demo pair), ``dispatch_model``.

Under ``accelerate launch`` every process places its own copy of the LLM (data parallelism, as
lm-eval's ``hf`` does): a strategy uses only the GPUs ``k`` with ``k % LOCAL_WORLD_SIZE ==
LOCAL_RANK``, and the CPU's free memory is split between the node's processes. An explicit map is
taken as written by every process.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading.placement_keys import (
    Device,
    PlacementRequest,
    as_device,
    device_name,
    parse_device_map,
    parse_max_memory,
)

log = logging.getLogger(__name__)
# With no max_memory given, a strategy leaves this share of each GPU to activations and KV caches
# (transformers reserves the same on a single GPU).
GPU_HEADROOM = 0.10
GiB = 2**30


# -- what this process may use ----------------------------------------------------------------


def gpu_count() -> int:
    """GPUs visible to this process."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def free_memory() -> dict[Device, int]:
    """Free bytes per device: each GPU (torch's cached but unused memory included) and the CPU."""
    from transformers.integrations.accelerate import get_max_memory

    return {k: int(v) for k, v in get_max_memory().items()}


def local_share() -> tuple[int, int]:
    """(this process's index on its node, processes on the node): (0, 1) outside a launcher."""
    return int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def budget(max_memory: str | None) -> dict[Device, int]:
    """Bytes each device may give the LLM in this process: its share of the free memory, capped by
    ``max_memory`` where given (the devices it names must exist)."""
    free = free_memory()
    rank, procs = local_share()
    gpus = [k for k in free if isinstance(k, int)]
    mine = [k for k in gpus if k % procs == rank]
    if gpus and not mine:
        raise ConfigError(
            f"{procs} processes on this node share {len(gpus)} GPUs: llm_device_map needs one GPU per "
            "process at least; launch fewer processes"
        )
    out: dict[Device, int] = {k: free[k] for k in mine}
    if max_memory is None:
        out = {k: int(v * (1 - GPU_HEADROOM)) for k, v in out.items()}
    for name in ("mps", "cpu"):
        if name in free:
            out[name] = free[name] // (procs if name == "cpu" else 1)
    if max_memory is not None:
        for device, size in parse_max_memory(max_memory).items():
            if device == "disk":  # bounded by the folder's free space (plan)
                continue
            check_device(device)
            if isinstance(device, int) and device not in mine:
                log.info("max_memory names %s, which is another process's GPU", device_name(device))
                continue
            out[device] = min(size, out.get(device, size))
    return out


def check_device(device: Device, offload_folder: str | None = None) -> None:
    """One line when ``device`` does not exist here (or is ``disk`` without a folder)."""
    if isinstance(device, int) and device >= gpu_count():
        seen = gpu_count()
        raise ConfigError(
            f"cuda:{device} does not exist: this process sees {seen} GPU{'s' * (seen != 1)}"
            + (f" (cuda:0-{seen - 1})" if seen else "; place the LLM on cpu and disk")
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("mps is not available here; use cpu or a GPU")
    if device == "disk" and offload_folder is None:
        raise ConfigError("the device map puts modules on disk: give offload_folder=DIR too")


# -- resolving and checking a request ---------------------------------------------------------


def empty_model(
    config: Any, dtype: torch.dtype, trust_remote_code: bool = False
) -> torch.nn.Module:
    """The model ``config`` describes, on the meta device: shapes and sizes, no memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(
            config, dtype=dtype, trust_remote_code=trust_remote_code
        )


def plan(
    request: PlacementRequest, config: Any, dtype: torch.dtype, trust_remote_code: bool = False
) -> dict[str, Device]:
    """The device map to load the model of ``config`` with, or one line saying why it cannot be."""
    from transformers.integrations.accelerate import compute_module_sizes

    empty = empty_model(config, dtype, trust_remote_code)
    wanted = parse_device_map(request.device_map)
    room = budget(request.max_memory)
    if isinstance(wanted, str):
        device_map = _infer(empty, wanted, room)
    else:
        device_map = wanted
        _check_covers(empty, device_map)
    sizes, _ = compute_module_sizes(empty, only_modules=False)
    held: dict[Device, int] = {}
    for name, device in device_map.items():
        held[device] = held.get(device, 0) + sizes.get(name, 0)
    kind = str(dtype).removeprefix("torch.")
    if isinstance(wanted, str) and "disk" in held and request.offload_folder is None:
        devices = ", ".join(f"{device_name(d)} {room[d] / GiB:.1f} GiB" for d in room)
        raise ConfigError(
            f"the LLM's weights need {sizes.get('', 0) / GiB:.1f} GiB in {kind}, more than this "
            f"process's devices hold ({devices}{' under max_memory' if request.max_memory else ' free'}"
            "); raise max_memory, add devices, or give offload_folder=DIR to keep the rest on disk"
        )
    for device in held:
        check_device(device, request.offload_folder)
    _check_memory(held, room, request, kind)
    return device_map


def _infer(empty: torch.nn.Module, strategy: str, room: dict[Device, int]) -> dict[str, Device]:
    """transformers' own inference for ``from_pretrained(device_map=strategy)``, on ``room``."""
    from transformers.integrations.accelerate import get_balanced_memory, infer_auto_device_map

    no_split = empty._no_split_modules
    memory = dict(room)
    if strategy != "sequential":
        memory = get_balanced_memory(
            empty,
            max_memory=memory,
            no_split_module_classes=no_split,
            low_zero=strategy == "balanced_low_0",
        )
    return dict(infer_auto_device_map(empty, max_memory=memory, no_split_module_classes=no_split))


def _check_covers(empty: torch.nn.Module, device_map: dict[str, Device]) -> None:
    modules = dict(empty.named_modules())
    unknown = [k for k in device_map if k and k not in modules]
    if unknown:
        top = ", ".join(n for n, _ in empty.named_children())
        raise ConfigError(
            f"llm_device_map names {unknown[0]!r}, which is not a module of the LLM "
            f"(its top-level modules: {top})"
        )
    if "" in device_map:
        return
    left = [
        name
        for name in empty.state_dict()
        if not any(name == k or name.startswith(k + ".") for k in device_map)
    ]
    if left:
        more = f" and {len(left) - 3} more" if len(left) > 3 else ""
        raise ConfigError(
            f"llm_device_map leaves out {', '.join(left[:3])}{more}; map every module of the LLM"
        )


def _check_memory(
    held: dict[Device, int], room: dict[Device, int], request: PlacementRequest, kind: str
) -> None:
    for device, size in held.items():
        if device == "disk":
            free = shutil.disk_usage(_existing(Path(request.offload_folder))).free
            if size > free:
                raise ConfigError(
                    f"offload_folder has {free / GiB:.1f} GiB free; the modules mapped to disk "
                    f"need {size / GiB:.1f} GiB"
                )
        elif device in room and size > room[device]:
            raise ConfigError(
                f"llm_device_map puts {size / GiB:.2f} GiB of the LLM ({kind}) on "
                f"{device_name(device)}, which has {room[device] / GiB:.2f} GiB "
                f"{'under max_memory' if request.max_memory else 'free'}; move modules elsewhere"
            )


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# -- placing a model already in memory; what run info records ---------------------------------


def dispatch(
    model: torch.nn.Module, request: PlacementRequest, device_map: dict[str, Device] | None = None
) -> torch.nn.Module:
    """``model`` (built on the CPU) placed by ``device_map`` (default: planned from ``request``)
    through accelerate's dispatch."""
    from accelerate import dispatch_model

    if device_map is None:
        device_map = plan(request, model.config, next(model.parameters()).dtype)
    offload = offload_dir(request, device_map)
    model = dispatch_model(
        model,
        device_map=device_map,
        offload_dir=offload,
        skip_keys=getattr(model, "_skip_keys_device_placement", None),
    )
    return removes_offload(model, offload)


def offload_dir(request: PlacementRequest, device_map: dict[str, Device]) -> str | None:
    """A folder of this load's own inside ``offload_folder`` when the map uses disk: accelerate
    reuses whatever index it finds in a folder, and the processes of one launch share the path."""
    if "disk" not in device_map.values():
        return None
    Path(request.offload_folder).mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix="llm-", dir=request.offload_folder)


def removes_offload(model: torch.nn.Module, folder: str | None) -> torch.nn.Module:
    """``model``, whose offload ``folder`` goes when it does."""
    if folder is not None:
        weakref.finalize(model, shutil.rmtree, folder, True)
    return model


def describe(model: torch.nn.Module) -> dict[str, Any]:
    """Where a model's modules are stored and run: per device, decoder layers as index ranges."""
    device_map = getattr(model, "hf_device_map", None) or {"": str(next(model.parameters()).device)}
    layers = _layer_prefix(model)
    parts: dict[str, list[str]] = {}
    for name, device in device_map.items():
        index = name.removeprefix(layers + ".") if layers and name.startswith(layers + ".") else ""
        entry = f"layers {index}" if index.isdigit() else (name or "all")
        parts.setdefault(device_name(as_device(device, "device map")), []).append(entry)
    out: dict[str, Any] = {"devices": {d: _ranges(p) for d, p in parts.items()}}
    offloaded = {"cpu", "disk"} & set(parts)
    runs = [d for d in parts if d not in ("cpu", "disk")]
    if offloaded and len(parts) > 1 or "disk" in parts:
        out["offloaded_run_on"] = runs[0] if runs else "cpu"  # accelerate's main device
    return out


def _layer_prefix(model: torch.nn.Module) -> str:
    base = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(base, "layers", None)
    return next((n for n, m in model.named_modules() if m is layers), "") if layers else ""


def _ranges(parts: list[str]) -> list[str]:
    """``layers 0``, ``layers 1``, ... folded into ``layers 0-1``; other names as they are."""
    indices = sorted(int(p.split()[1]) for p in parts if p.startswith("layers "))
    out, start = [], None
    for i, index in enumerate(indices):
        start = index if start is None else start
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            out.append(f"layers {start}" + (f"-{index}" if index != start else ""))
            start = None
    return out + [p for p in parts if not p.startswith("layers ")]
