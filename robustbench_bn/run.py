"""``rbn-run``: the Hydra entry point, a thin wrapper over :func:`robustbench_bn.runner.run`."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from robustbench_bn.errors import ConfigurationError


def _config_hash_resolver(*, _root_: DictConfig) -> str:
    from robustbench_bn.runner import config_hash

    return config_hash(_root_)


OmegaConf.register_new_resolver("rbn_config_hash", _config_hash_resolver, replace=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from robustbench_bn.runner import run

    try:
        run(cfg)
    except (ConfigurationError, FloatingPointError) as error:
        print(f"rbn-run: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
