"""One job: build model, benchmark, fine-tune and method from the config, evaluate every cell.

This is the only module that reads the config. For every cell (clean, then each corruption
at each severity) it resets the method to the source state (unless ``runner.reset=continual``),
lets the method adapt, evaluates the whole cell, and appends the cell's row to ``rows.csv``
in the job folder before moving on. Cells already in ``rows.csv`` are skipped, so re-running
an interrupted job finishes it without redoing or duplicating anything.

The order of a cell's images (``runner.order``) and whether cells share one stream
(``runner.stream=mixed``: all corruptions of a severity) come from
:mod:`robustbench_bn.data.streams`; a mixed stream's rows are written together when the
stream ends, so a resumed job redoes at most the unfinished severity.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

from robustbench_bn.data.benchmark import (
    CLEAN_CELL,
    Cell,
    CorruptionBenchmark,
    as_float_images,
    check_severity,
)
from robustbench_bn.data.streams import (
    Stream,
    build_stream,
    check_order,
    check_stream,
    iterate_stream,
    load_positions,
    plan_units,
    sample_positions,
)
from robustbench_bn.errors import ConfigurationError
from robustbench_bn.methods.base import Method
from robustbench_bn.models.checks import check_model_outputs
from robustbench_bn.results import JobRows, accuracy_table, finetune_params
from robustbench_bn.utils.devices import resolve_device
from robustbench_bn.utils.environment import environment
from robustbench_bn.utils.files import atomic_write_text, stable_hash
from robustbench_bn.utils.tables import markdown_table

log = logging.getLogger(__name__)

#: Config sections, and keys anywhere, that change no number and so stay out of the config hash.
PRESENTATION_KEYS = ("hydra", "paths", "display")
LOCATION_KEYS = ("data_dir", "cache_dir", "download", "progress")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
RESET_MODES = ("per_cell", "continual")


def _without_locations(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_locations(v) for k, v in value.items() if k not in LOCATION_KEYS}
    if isinstance(value, list):
        return [_without_locations(item) for item in value]
    return value


#: Stream settings at the values every job had before they existed: left out of the hash then,
#: so the folders of earlier jobs keep their names and resume.
DEFAULT_STREAM_SETTINGS = {"order": "sequential", "stream": "cells"}


def number_settings(cfg: DictConfig) -> dict[str, Any]:
    """Every setting that can change a number: the config without paths, display and locations."""
    container = {
        key: OmegaConf.to_container(cfg[key], resolve=True)
        if OmegaConf.is_config(cfg[key])
        else cfg[key]
        for key in cfg
        if key not in PRESENTATION_KEYS
    }
    runner = container.get("runner")
    if isinstance(runner, dict):
        if runner.get("order") != "label_shift":
            runner.pop("label_shift_alpha", None)  # read by label_shift alone
        for key, default in DEFAULT_STREAM_SETTINGS.items():
            if runner.get(key) == default:
                runner.pop(key)
    return _without_locations(container)


def config_hash(cfg: DictConfig) -> str:
    """Hash of :func:`number_settings`; names the job folder and is written into every row."""
    return stable_hash(number_settings(cfg))


#: Keys of a group node that the runner reads itself; the rest are the builder's arguments.
RUNNER_KEYS = ("name", "corruptions", "severities", "include_clean")


def _builder_arguments(node: DictConfig) -> dict[str, Any]:
    container = OmegaConf.to_container(node, resolve=True)
    return {key: value for key, value in container.items() if key not in RUNNER_KEYS}


#: Builder arguments the runner passes itself, never the config.
SUPPLIED_BY_RUNNER = ("self", "model", "training_images", "cache_key")


def _check_method_seed(cfg: DictConfig) -> None:
    """A method's own seed (which training images eata's Fisher or dmc's quantiles use, dua's
    augmentations) is the run's: rows record the run's ``seed`` column, not every method's."""
    method_seed = cfg.method.get("seed")
    if method_seed is not None and int(method_seed) != int(cfg.seed):
        raise ConfigurationError(
            f"method.seed={method_seed} differs from seed={cfg.seed}: the rows record only the "
            f"run's seed. Set seed={method_seed} instead (it also seeds the corruption draws "
            "and the stream order), or leave method.seed as ${seed}."
        )


def check_settings_taken(node: dict[str, Any], section: str, choice: str) -> None:
    """Refuse settings that the builder of ``section`` (``method=choice``) does not take, with
    their names and the ones it does, before Hydra turns them into a raw TypeError."""
    target = node.get("_target_")
    if not target:
        return
    try:
        builder = get_object(str(target))
        parameters = inspect.signature(builder).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return  # Hydra's own error names a target it cannot import
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters.values()):
        return
    taken = [name for name in parameters if name not in SUPPLIED_BY_RUNNER]
    unknown = sorted(key for key in node if not key.startswith("_") and key not in parameters)
    if unknown:
        close = {name: difflib.get_close_matches(name, taken, n=1) for name in unknown}
        hints = "".join(f" Did you mean {section}.{c[0]}?" for c in close.values() if c)
        accepted = f"It takes: {', '.join(taken)}." if taken else "It takes no settings."
        raise ConfigurationError(
            f"{section}={choice} takes no setting {', '.join(unknown)}.{hints} {accepted} "
            f"Settings written for another {section} (an experiment preset's, or "
            f"'+{section}.{unknown[0]}=...' on the command line) do not carry over: remove "
            f"them (e.g. '~{section}.{unknown[0]}'), or put a preset's settings for one "
            f"{section} in conf/experiment_{section}/<experiment>/<{section}>.yaml."
        )


def instantiate(node: Any, **kwargs: Any) -> Any:
    """Hydra's instantiate, but a user error raised by the target reaches the user unwrapped."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigurationError):
            raise error.__cause__ from None
        raise


def _check_corruptions(requested: list[str], available: tuple[str, ...], dataset: str) -> None:
    if not requested:
        raise ConfigurationError(
            "dataset.corruptions is empty; name at least one corruption, e.g. "
            "'dataset.corruptions=[gaussian_noise]'."
        )
    for name in requested:
        if name not in available:
            close = difflib.get_close_matches(str(name), available, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(
                f"Unknown corruption {name!r} for {dataset}.{hint} "
                f"Available: {', '.join(available)}."
            )


def plan_cells(cfg: DictConfig, benchmark: CorruptionBenchmark) -> list[Cell]:
    """Clean first (if asked), then every corruption at every severity, in config order."""
    corruptions = list(cfg.dataset.corruptions)
    _check_corruptions(corruptions, benchmark.available_corruptions(), benchmark.name)
    severities = [check_severity(severity) for severity in cfg.dataset.severities]
    if not severities:
        raise ConfigurationError(
            "dataset.severities is empty; e.g. 'dataset.severities=[1,2,3,4,5]'."
        )
    cells = [CLEAN_CELL] if cfg.dataset.include_clean else []
    cells += [Cell(corruption, severity) for corruption in corruptions for severity in severities]
    return cells


@contextlib.contextmanager
def _precision(device: torch.device, precision: str) -> Iterator[None]:
    dtype = PRECISIONS[precision]
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def evaluate_cell(
    method: Method,
    benchmark: CorruptionBenchmark,
    cell: Cell,
    *,
    batch_size: int,
    device: torch.device,
    precision: str,
    seed: int,
    channels_last: bool = False,
    order: str = "sequential",
    label_shift_alpha: float | None = None,
) -> tuple[int, int]:
    """Adapt (if the method wants samples) and count correct predictions over the whole cell,
    its images in ``order`` (:mod:`robustbench_bn.data.streams`)."""
    stream = build_stream(
        benchmark, [cell], order=order, label_shift_alpha=label_shift_alpha, seed=seed
    )
    [counts] = evaluate_stream(
        method,
        benchmark,
        stream,
        batch_size=batch_size,
        device=device,
        precision=precision,
        seed=seed,
        channels_last=channels_last,
    )
    return counts


def evaluate_stream(
    method: Method,
    benchmark: CorruptionBenchmark,
    stream: Stream,
    *,
    batch_size: int,
    device: torch.device,
    precision: str,
    seed: int,
    channels_last: bool = False,
) -> list[tuple[int, int]]:
    """(correct, total) for each of ``stream.cells``, the method seeing the stream in order."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def to_device(images: torch.Tensor) -> torch.Tensor:
        if images.device.type == "cpu" and device.type == "cuda":
            # Page-locked memory lets the copy overlap with the previous batch's compute.
            images = images.pin_memory()
        images = images.to(device, non_blocking=True)  # no copy when already there
        return as_float_images(images).contiguous(memory_format=memory_format)

    if method.cell_samples:
        positions = sample_positions(stream, method.cell_samples, seed)
        samples, _ = load_positions(benchmark, stream, positions)
        with _precision(device, precision):
            method.adapt(to_device(samples))
    # Counted on the device and read once at the end: a per-batch .item() would make the host
    # wait for every batch and leave the device idle while the next one loads.
    cells = len(stream.cells)
    correct = torch.zeros(cells, dtype=torch.int64, device=device)
    finite = torch.ones((), dtype=torch.bool, device=device)
    for images, labels, cell_ids in prefetch(iterate_stream(benchmark, stream, batch_size), device):
        with _precision(device, precision):
            logits = method.predict(to_device(images))
        finite &= torch.isfinite(logits).all()
        labels = labels.to(device, non_blocking=True)
        hits = (logits.argmax(1) == labels).long()
        if cells == 1:
            correct += hits.sum()
        else:
            correct.index_add_(0, cell_ids.to(device, non_blocking=True), hits)
    if not bool(finite):
        where = stream.cells[0] if cells == 1 else ", ".join(map(str, stream.cells))
        raise FloatingPointError(
            f"The method produced non-finite logits in {where}; nothing of it is written. "
            "For tent, lower method.learning_rate; with reduced precision, "
            "use runner.precision=fp32."
        )
    return list(zip(correct.tolist(), stream.counts(), strict=True))


def prefetch(
    batches: Iterator[tuple[torch.Tensor, ...]], device: torch.device
) -> Iterator[tuple[torch.Tensor, ...]]:
    """On CUDA, a thread loads the next batch, pins it and copies it to the device on a side
    stream while the device computes on this one; the compute stream waits for the copy on the
    device, never on the host. On the CPU, where loading and compute share the same cores,
    the batches pass through."""
    if device.type != "cuda":
        yield from batches
        return
    from concurrent.futures import ThreadPoolExecutor

    copy_stream = torch.cuda.Stream(device)
    compute_stream = torch.cuda.current_stream(device)

    def next_on_device():
        batch = next(batches, None)
        if batch is None:
            return None
        # A benchmark that decodes on the GPU (dataset.decode_device=cuda) hands over device
        # tensors: nothing to pin or copy.
        pinned = [
            tensor.pin_memory() if tensor.device.type == "cpu" else tensor for tensor in batch
        ]
        with torch.cuda.stream(copy_stream):
            tensors = [tensor.to(device, non_blocking=True) for tensor in pinned]
            copied = torch.cuda.Event()
            copied.record(copy_stream)
        return tensors, copied

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next_on_device)
        while (batch := pending.result()) is not None:
            pending = pool.submit(next_on_device)
            tensors, copied = batch
            compute_stream.wait_event(copied)
            # Memory made on the copy stream is in use on the compute stream until it is done.
            for tensor in tensors:
                tensor.record_stream(compute_stream)
            yield tuple(tensors)


def run(cfg: DictConfig, *, model: torch.nn.Module | None = None) -> pd.DataFrame:
    """Run one job; returns its rows (those resumed and those computed now).

    ``model``: an already built model that takes [0, 1] images, used instead of building
    ``cfg.model`` (:func:`robustbench_bn.api.evaluate` passes the user's); ``cfg.model`` then
    only describes it (name and fingerprint), so it still names the job folder and the rows.
    """
    output_dir = Path(cfg.paths.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigurationError(
            f"Cannot write to the output folder {output_dir} ({error.strerror}); "
            "choose another with hydra.run.dir=... or paths.output_root=..."
        ) from error
    runner = cfg.runner
    if runner.reset not in RESET_MODES:
        raise ConfigurationError(
            f"runner.reset must be one of {RESET_MODES}, got {runner.reset!r}."
        )
    if runner.precision not in PRECISIONS:
        raise ConfigurationError(
            f"runner.precision must be one of {tuple(PRECISIONS)}, got {runner.precision!r}."
        )
    if int(runner.batch_size) < 1:
        raise ConfigurationError(f"runner.batch_size must be >= 1, got {runner.batch_size}.")
    check_order(_order(runner), _label_shift_alpha(runner))
    check_stream(_stream(runner))
    for section in ("finetune", "method"):  # before any data is read or model trained
        check_settings_taken(_builder_arguments(cfg[section]), section, str(cfg[section].name))
    _check_method_seed(cfg)
    torch.manual_seed(int(cfg.seed))
    device = resolve_device(runner.device, setting="runner.device")
    job_hash = config_hash(cfg)
    rows = JobRows(output_dir, config_hash=job_hash)

    benchmark: CorruptionBenchmark = instantiate(_builder_arguments(cfg.dataset))
    cells = plan_cells(cfg, benchmark)
    remaining = [cell for cell in cells if cell not in rows.done()]
    provenance = environment(device)
    job_record = {
        "config_hash": job_hash,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "environment": provenance,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cells_planned": len(cells),
        "cells_resumed": len(cells) - len(remaining),
    }
    atomic_write_text(output_dir / "job.json", json.dumps(job_record, indent=2, default=str))
    started = time.perf_counter()
    if remaining:
        _evaluate_remaining(
            cfg, benchmark, remaining, rows, device, job_hash, provenance, model=model
        )
    else:
        log.info("All %d cells are already in %s; nothing to do.", len(cells), rows.path)
    job_record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    job_record["seconds"] = round(time.perf_counter() - started, 2)
    job_record["cells_evaluated"] = len(remaining)
    atomic_write_text(output_dir / "job.json", json.dumps(job_record, indent=2, default=str))
    frame = rows.frame()
    _write_tables(frame, output_dir, print_table=bool(cfg.display.print_table))
    return frame


def _order(runner: DictConfig) -> str:
    return str(runner.get("order", "sequential"))


def _stream(runner: DictConfig) -> str:
    return str(runner.get("stream", "cells"))


def _label_shift_alpha(runner: DictConfig) -> float | None:
    """The Dirichlet concentration, or None when the order does not use one."""
    return runner.get("label_shift_alpha") if _order(runner) == "label_shift" else None


def _build_method(
    cfg: DictConfig,
    benchmark: CorruptionBenchmark,
    device: torch.device,
    model: torch.nn.Module | None = None,
) -> Method:
    started = time.perf_counter()
    if model is None:
        model = instantiate(_builder_arguments(cfg.model))
    model_key = getattr(model, "cache_key", None) or stable_hash(_builder_arguments(cfg.model))
    cache_dir = str(cfg.paths.cache_dir)
    if cfg.finetune.get("_target_"):
        finetune = instantiate(_builder_arguments(cfg.finetune), _partial_=True)
        model = finetune(
            model=model,
            training_images=benchmark.training_images,
            cache_key=model_key,
            cache_dir=cache_dir,
        )
        model_key = stable_hash([model_key, _builder_arguments(cfg.finetune)])
    model = model.to(device).eval()
    if cfg.runner.channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = instantiate(_builder_arguments(cfg.method), _partial_=True)(model=model)
    if method.needs_training_data:
        method.prepare(benchmark.training_images, cache_key=model_key, cache_dir=cache_dir)
    log.info("Model, fine-tune and method ready in %.1f s", time.perf_counter() - started)
    return method


def _evaluate_remaining(
    cfg: DictConfig,
    benchmark: CorruptionBenchmark,
    cells: list[Cell],
    rows: JobRows,
    device: torch.device,
    job_hash: str,
    provenance: dict[str, Any],
    model: torch.nn.Module | None = None,
) -> None:
    from tqdm import tqdm

    method = _build_method(cfg, benchmark, device, model)
    check_model_outputs(method.model, benchmark, cells[0], device)
    runner = cfg.runner
    shared_fields = {
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "finetune": cfg.finetune.name,
        # Split point, epochs, learning rate, attack, augmentation, seed, ...: what the
        # fine-tuned weights depend on, as method_params is for the method.
        "finetune_params": finetune_params(OmegaConf.to_container(cfg.finetune, resolve=True)),
        "method": cfg.method.name,
        "method_params": json.dumps(method.row_fields(), sort_keys=True),
        **benchmark.row_fields(),
        "preprocessing": getattr(method.model, "preprocessing", "unknown"),
        "batch_size": int(runner.batch_size),
        "order": _order(runner),
        "label_shift_alpha": _label_shift_alpha(runner),
        "stream": _stream(runner),
        "reset": runner.reset,
        "precision": runner.precision,
        "channels_last": bool(runner.channels_last),
        "seed": int(cfg.seed),
        "config_hash": job_hash,
        "package_version": provenance["robustbench_bn"],
        "git_revision": provenance["git_revision"],
        "torch_version": provenance["torch"],
        "device": provenance["device"],
    }
    if runner.reset == "continual" and rows.rows:
        raise ConfigurationError(
            "A continual run cannot resume mid-sequence: the adapted state of the finished "
            f"cells is gone. Delete {rows.path} to start the sequence again."
        )
    units = plan_units(cells, _stream(runner))
    _check_mixed_resume(units, rows)
    method.reset()
    progress = tqdm(
        total=len(cells),
        desc=f"{cfg.method.name} on {cfg.dataset.name}",
        unit="cell",
        disable=not cfg.display.progress,
    )
    stream_settings = {
        "order": _order(runner),
        "label_shift_alpha": _label_shift_alpha(runner),
        "seed": int(cfg.seed),
    }
    evaluation_settings = {
        "batch_size": int(runner.batch_size),
        "device": device,
        "precision": runner.precision,
        "seed": int(cfg.seed),
        "channels_last": bool(runner.channels_last),
    }
    try:
        for unit in units:
            if runner.reset == "per_cell":
                method.reset()  # per stream: once per severity when the cells are mixed
            started = time.perf_counter()
            if len(unit) == 1:
                counts = [
                    evaluate_cell(
                        method,
                        benchmark,
                        unit[0],
                        order=stream_settings["order"],
                        label_shift_alpha=stream_settings["label_shift_alpha"],
                        **evaluation_settings,
                    )
                ]
            else:
                stream = build_stream(benchmark, unit, **stream_settings)
                counts = evaluate_stream(method, benchmark, stream, **evaluation_settings)
            seconds = time.perf_counter() - started
            finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
            images = sum(total for _, total in counts)
            new_rows = []
            for cell, (correct, total) in zip(unit, counts, strict=True):
                accuracy = 100.0 * correct / total
                # A mixed stream's time is shared out by each cell's part of its images.
                cell_seconds = seconds * total / images
                new_rows.append(
                    {
                        **shared_fields,
                        "corruption": cell.corruption,
                        "severity": cell.severity,
                        "n": total,
                        "correct": correct,
                        "accuracy": round(accuracy, 4),
                        "error": round(100.0 - accuracy, 4),
                        "seconds": round(cell_seconds, 3),
                        "images_per_second": round(total / cell_seconds, 1),
                        "finished_at": finished_at,
                    }
                )
            # One write per stream: a mixed severity is saved whole or not at all.
            rows.add_all(new_rows)
            progress.update(len(unit))
            unit_accuracy = 100.0 * sum(correct for correct, _ in counts) / images
            name = str(unit[0]) if len(unit) == 1 else f"mixed severity {unit[0].severity}"
            progress.set_postfix(cell=name, accuracy=f"{unit_accuracy:.1f}")
    except KeyboardInterrupt:
        log.warning(
            "Interrupted: %d finished cells are saved in %s; run the same command to resume.",
            len(rows.rows),
            rows.path,
        )
        raise
    finally:
        progress.close()


def _check_mixed_resume(units: list[list[Cell]], rows: JobRows) -> None:
    """A mixed stream is saved whole, so a severity with only some cells done was not written
    by this job's stream: refuse rather than mix two streams' numbers."""
    done = rows.done()
    for unit in units:
        if len(unit) < 2:
            continue
        severity = unit[0].severity
        finished = sorted(str(c) for c in done if not c.is_clean and c.severity == severity)
        if finished:
            raise ConfigurationError(
                f"{rows.path} holds {', '.join(finished)} but not the rest of the mixed stream "
                f"of severity {severity}: a mixed stream adapts across all its cells, so it "
                f"cannot be resumed part-way. Delete those rows (or {rows.path}) to redo "
                f"severity {severity}."
            )


def _write_tables(frame: pd.DataFrame, output_dir: Path, *, print_table: bool) -> None:
    if frame.empty:
        return
    table = accuracy_table(frame)
    atomic_write_text(output_dir / "table.csv", table.to_csv(float_format="%.2f"))
    markdown = markdown_table(table, index_name="corruption")
    atomic_write_text(output_dir / "table.md", markdown + "\n")
    if print_table:
        first = frame.iloc[0]
        print(
            f"\n{first['method']} {first['method_params']} | {first['dataset']} | "
            f"{first['model']} | finetune={first['finetune']} | accuracy (%)"
        )
        print(markdown)
        print(f"rows: {output_dir / 'rows.csv'}")
