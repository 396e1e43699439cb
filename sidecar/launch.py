"""What `llm-sidecar serve` and `llm-sidecar worker` share when they start a process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any


def env_int(name: str, default: int) -> int:
    """An integer option's default from the environment; unset or empty means `default`."""
    value = os.environ.get(name)
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    """A number of seconds' default from the environment; unset or empty means `default`."""
    value = os.environ.get(name)
    return float(value) if value else default


def default_state_dir() -> Path:
    """Where state files live unless told: `$SIDECAR_STATE_DIR`, else the user's state folder
    (`$XDG_STATE_HOME/llm-sidecar`, `~/.local/state/llm-sidecar`), never the current folder,
    so a run from a checkout leaves no database in the repository. The image sets
    `SIDECAR_STATE_DIR` to its volume."""
    given = os.environ.get("SIDECAR_STATE_DIR")
    if given:
        return Path(given)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "llm-sidecar"


def add_process_options(
    parser: argparse.ArgumentParser, state_help: str, ops_help: str = "health and status port"
) -> None:
    """The options every long-running command takes, each with its environment default."""
    parser.add_argument(
        "--policies",
        type=Path,
        default=os.environ.get("SIDECAR_POLICIES"),
        help="policy folder (default $SIDECAR_POLICIES)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help=f"{state_help} (default $SIDECAR_STATE_DIR, else $XDG_STATE_HOME/llm-sidecar"
        " or ~/.local/state/llm-sidecar)",
    )
    parser.add_argument(
        "--ops-host",
        default=os.environ.get("SIDECAR_OPS_HOST", "0.0.0.0"),
        help="health and status address (default $SIDECAR_OPS_HOST or all: for the kubelet)",
    )
    parser.add_argument(
        "--ops-port",
        type=int,
        default=env_int("SIDECAR_OPS_PORT", 8481),
        help=ops_help,
    )
    parser.add_argument(
        "--ops-idle-timeout",
        type=float,
        default=env_float("SIDECAR_OPS_IDLE_TIMEOUT", 5.0),
        help="seconds an ops connection may stay open without a complete request (default 5)",
    )
    parser.add_argument(
        "--ops-max-connections",
        type=int,
        default=env_int("SIDECAR_OPS_MAX_CONNECTIONS", 64),
        help="ops connections open at once; more are closed on arrival (default 64)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("SIDECAR_LOG_LEVEL", "info"),
        help="debug, info, warning or error (default $SIDECAR_LOG_LEVEL or info)",
    )


def policies_given(command: str, policies: Path | None) -> bool:
    if policies is None:
        print(
            f"llm-sidecar {command}: give --policies DIR or set SIDECAR_POLICIES", file=sys.stderr
        )
        return False
    return True


def run(main: Coroutine[Any, Any, None], log_level: str) -> None:
    """Run `main` to its end on uvloop when it is installed (roughly doubles requests
    per second on one core), else on asyncio's own loop."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
