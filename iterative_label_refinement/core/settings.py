"""The run's settings: the user-error type, `.env` and the folders it names, logging and seeding."""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path


def get_logger(name: str = "ilr") -> logging.Logger:
    """A logger with a level from $ILR_LOG_LEVEL (default INFO), printing to stderr."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(os.environ.get("ILR_LOG_LEVEL", "INFO").upper())
        logger.propagate = False
    return logger


def seed_everything(seed: int) -> None:
    import numpy as np  # here, not at the top: the scripts' many small queries never seed
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class ConfigError(ValueError):
    """Bad user input: the message names the bad value and what is valid."""


def load_env() -> None:
    """Read `.env` from the working directory (or a parent) without overriding the environment."""
    from dotenv import find_dotenv, load_dotenv

    load_dotenv(find_dotenv(usecwd=True), override=False)


def get_save_path(results_folder: str | None = None) -> Path:
    """`results_folder`, else $ILR_SAVE_PATH (from the environment or `.env`)."""
    if results_folder:
        source, path = "--results_folder", results_folder
    else:
        load_env()
        source, path = "ILR_SAVE_PATH", os.environ.get("ILR_SAVE_PATH")
    if not path:
        raise ConfigError(
            "No results folder: pass --results_folder=<dir> or set ILR_SAVE_PATH in the environment "
            "or in .env (see .env.example)."
        )
    if Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(f"{source}={path} is a file, not a folder: name a results folder")
    return Path(path)


def get_data_path() -> Path:
    """Where prepared task data lives: $ILR_DATA_PATH, default `data/`."""
    load_env()
    return Path(os.environ.get("ILR_DATA_PATH", "data"))


def get_cache_path() -> Path:
    """Where offline tiny models are built once: $ILR_CACHE_PATH, default ~/.cache/iterative_label_refinement."""
    load_env()
    default = Path.home() / ".cache" / "iterative_label_refinement"
    return Path(os.environ.get("ILR_CACHE_PATH", default))
