"""Starting Ray the same way everywhere: a cluster when ``RAY_ADDRESS`` says so, else local."""

from __future__ import annotations

import logging
import os


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to ``$RAY_ADDRESS`` (a cluster, or a job's own) or start a local instance.

    Locally Ray stays on 127.0.0.1, and re-initializing is a no-op. The local dashboard (on
    127.0.0.1 only) serves the State API that Ray Train's placement-group cleaner polls: without
    it the cleaner logs a warning at every poll of a training run.
    """
    import ray
    import ray.data

    # Progress bars redraw many times a second: in logs and CI output they are noise.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.data.DataContext.get_current().enable_progress_bars = False
    _quiet_ray_data_console()
    if ray.is_initialized():
        return
    # A local instance binds to loopback only (field notes: it picks eth0 otherwise).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True,
                 _node_ip_address="127.0.0.1", configure_logging=False)


def _hide_on_console(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Progress bars disabled")


def _quiet_ray_data_console() -> None:
    """Ray Data's console shows warnings and errors only; its file log (the Ray session's
    ``logs/ray-data/``) keeps everything. It prints every dataset's start, plan and end at INFO
    level, and a warning that progress bars are off, on every job's terminal."""
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ == "PlainRayHandler":   # the console; the file handler keeps DEBUG
            handler.setLevel(logging.WARNING)
            if _hide_on_console not in handler.filters:
                handler.addFilter(_hide_on_console)
