"""``rbn-run``: the Hydra entry point, a thin wrapper over :func:`robustbench_bn.runner.run`.

A single run refuses bad input with the error's message and exit status 2. In a multirun
(``rbn-run -m ...``) a refused job (a :class:`ConfigurationError`, e.g. batch size 1 for a
method that needs a batch) must not end the sweep: the job writes the message to
``refused.txt`` in its own folder, logs it and returns, so every valid job still runs; the
:class:`RefusedJobsSummary` callback lists the refused jobs when the sweep ends and ``rbn-run``
exits with status 2. Any other exception still stops the sweep as Hydra does.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from robustbench_bn.errors import ConfigurationError

log = logging.getLogger(__name__)

#: Written into the folder of a job that a multirun refused.
REFUSED_FILE = "refused.txt"
#: Filled by RefusedJobsSummary when a sweep ends: the refused jobs' files.
REFUSED_JOBS: list[Path] = []
#: A refusal written this long before the sweep started still counts as this sweep's
#: (file times on a cluster's shared disk may lag the submitting host's clock).
CLOCK_TOLERANCE_SECONDS = 5.0


def _config_hash_resolver(*, _root_: DictConfig) -> str:
    from robustbench_bn.runner import config_hash

    return config_hash(_root_)


OmegaConf.register_new_resolver("rbn_config_hash", _config_hash_resolver, replace=True)


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _record_refusal(cfg: DictConfig, error: ConfigurationError) -> None:
    overrides = " ".join(HydraConfig.get().overrides.task)
    path = Path(cfg.paths.output_dir) / REFUSED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{overrides}\n{error}\n")
    log.error("Refused (the sweep goes on): %s", error)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from robustbench_bn.runner import run

    multirun = _in_multirun()
    if multirun:
        # A refusal left by an earlier sweep of this same job is not this sweep's.
        (Path(cfg.paths.output_dir) / REFUSED_FILE).unlink(missing_ok=True)
    try:
        run(cfg)
    except ConfigurationError as error:
        if multirun:
            try:
                _record_refusal(cfg, error)
                return
            except OSError:
                pass  # nowhere to record it: stop the sweep with the message, as a single run
        print(f"rbn-run: error: {error}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as error:
        print(f"rbn-run: error: {error}", file=sys.stderr)
        sys.exit(2)


class RefusedJobsSummary(Callback):
    """At the end of a multirun, lists the jobs that were refused (their ``refused.txt``
    written since the sweep started, in any launcher's processes) on stderr."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        refused = sorted(
            path
            for path in sweep_dir.rglob(REFUSED_FILE)
            if path.stat().st_mtime >= self.started - CLOCK_TOLERANCE_SECONDS
        )
        REFUSED_JOBS.extend(refused)
        if not refused:
            return
        lines = [f"rbn-run: {len(refused)} job(s) of the sweep were refused; the others ran:"]
        for path in refused:
            overrides, _, message = path.read_text().partition("\n")
            lines += [f"  {overrides or '(no overrides)'}", f"    {message.strip()}"]
            lines.append(f"    ({path.parent})")
        print("\n".join(lines), file=sys.stderr)


def main() -> None:
    """``rbn-run``: exit status 2 when a single run, or any job of a multirun, was refused."""
    REFUSED_JOBS.clear()
    _hydra_main()
    if REFUSED_JOBS:
        sys.exit(2)


if __name__ == "__main__":
    main()
