"""Training checkpoints that load without unpickling: tensors in safetensors files, everything else in JSON.

Layout of ``<run>/checkpoints/step_<NNNNNNNN>/``:
- ``model.safetensors`` (and ``ema.safetensors`` with EMA): weights by parameter name;
- ``optimizer.safetensors``: the optimizer's per-parameter state, flattened to ``state.<param>.<name>``;
- ``rng.safetensors``: the noise/timestep generator state (the data order is a pure function of seed and epoch);
- ``state.json``: step, optimizer param groups, LR-scheduler state, EMA step, the run's config.
A checkpoint is written to ``step_N.tmp`` and renamed when complete, so a crash mid-write never leaves a
checkpoint that looks finished.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pudm_bench.errors import ConfigError

STEP_PREFIX = "step_"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (``.tmp`` leftovers of an interrupted write are ignored)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX) and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = value
    for param_id, values in meta.get("scalars", {}).items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _trainable_names(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights a checkpoint holds: the whole state dict, or only the trained parameters when some are frozen
    (LoRA adapters: megabytes instead of a multi-GB copy of the frozen base model, which is reloaded from its
    source)."""
    if all(p.requires_grad for p in model.parameters()):
        return model.state_dict()
    params = dict(model.named_parameters())
    return {name: params[name] for name in _trainable_names(model)}


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    generator: torch.Generator,
    ema: Any | None,
    config: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and keep only the newest ``keep`` checkpoints."""
    final = checkpoint_dir(run_dir) / f"{STEP_PREFIX}{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model_state(model).items()}, tmp / "model.safetensors")
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    save_file({"noise": generator.get_state()}, tmp / "rng.safetensors")
    ema_step = None
    if ema is not None:
        names = _trainable_names(model)
        save_file({n: p.detach().cpu().contiguous() for n, p in zip(names, ema.shadow_params)}, tmp / "ema.safetensors")
        ema_step = ema.optimization_step
    sched_state = {k: v for k, v in lr_scheduler.state_dict().items() if k != "lr_lambdas"}
    state = {"step": step, "optimizer": opt_meta, "lr_scheduler": sched_state, "ema_step": ema_step,
             "config": config}
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads((Path(path) / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(_corrupt(path, exc)) from None
    missing = [key for key in ("step", "config") if not isinstance(state, dict) or key not in state]
    if missing:  # e.g. a state.json cut short by a crash, or written by something else
        raise ConfigError(_corrupt(path, KeyError(missing[0])))
    return state


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check, without loading any tensor, that a checkpoint is complete: its state.json and the header of each
    safetensors file it needs. Returns the state; a missing or damaged file is a ConfigError naming the fix."""
    from safetensors import safe_open

    path = Path(path)
    state = read_checkpoint_state(path)
    needed = ["model", "optimizer", "rng"] + (["ema"] if state.get("ema_step") is not None else [])
    for name in needed:
        try:
            with safe_open(str(path / f"{name}.safetensors"), framework="pt") as f:
                f.keys()
        except (OSError, SafetensorError) as exc:
            raise ConfigError(_corrupt(path, exc)) from None
    return state


def _corrupt(path: Path, exc: Exception) -> str:
    return (f"checkpoint {path} is unreadable ({type(exc).__name__}); delete that folder to resume from the "
            "previous checkpoint, or start fresh with --no-resume")


def load_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    generator: torch.Generator,
    ema: Any | None,
) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` wrote, in place; returns the JSON state (step, config, ...)."""
    path = Path(path)
    state = read_checkpoint_state(path)
    device = next(model.parameters()).device
    try:
        weights = load_file(path / "model.safetensors", device=str(device))
        partial = not all(p.requires_grad for p in model.parameters())
        missing, unexpected = model.load_state_dict(weights, strict=not partial)
        if partial and (unexpected or set(_trainable_names(model)) - set(weights)):
            raise KeyError("the checkpoint's trained parameters do not match the model's")
        optimizer.load_state_dict(_unflatten_optimizer(load_file(path / "optimizer.safetensors"), state["optimizer"]))
        generator.set_state(load_file(path / "rng.safetensors")["noise"])
        if ema is not None:
            shadow = load_file(path / "ema.safetensors", device=str(device))
            names = _trainable_names(model)
            ema.shadow_params = [shadow[n] for n in names]
            ema.optimization_step = state["ema_step"]
    except (OSError, SafetensorError, KeyError, RuntimeError) as exc:
        raise ConfigError(_corrupt(path, exc)) from None
    lr_scheduler.load_state_dict({**lr_scheduler.state_dict(), **state["lr_scheduler"]})
    return state
