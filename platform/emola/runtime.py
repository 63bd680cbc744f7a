"""Starting Ray the same way everywhere: a cluster when ``RAY_ADDRESS`` says so, else local."""

from __future__ import annotations

import logging
import os


def is_local() -> bool:
    """Whether this process runs its own local Ray instance (no ``$RAY_ADDRESS``)."""
    return not os.environ.get("RAY_ADDRESS")


def map_on_actors(ds, actor_cls, **kwargs):
    """``ds.map_batches(actor_cls, **kwargs)`` on an actor pool. On a cluster a lost actor is recreated (Ray Data's
    default); a local run fails fast instead: an actor that dies on one machine is a bug or out of memory, not a
    lost node (and with restarts on, Ray logs an error-level line at every pool's start, ray-project/ray#53727).
    Ray Data takes ``max_restarts`` only among its deprecated free-form remote arguments: its warning is muted
    here, for this argument alone."""
    import warnings

    if not is_local():
        return ds.map_batches(actor_cls, **kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(actor_cls, **kwargs, max_restarts=0)


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to ``$RAY_ADDRESS`` (a cluster, or a job's own) or start a local instance.

    Locally Ray stays on 127.0.0.1, and re-initializing is a no-op. The local dashboard (on
    127.0.0.1 only) serves the State API that Ray Train's placement-group cleaner polls: without
    it the cleaner logs a warning at every poll of a training run. A local instance keeps its
    workers' and actors' output in the session's log files (``/tmp/ray/session_latest/logs``)
    instead of echoing it: each job prints its own lines (training relays its progress lines
    from the run's ``progress.log``), and errors reach the driver as exceptions. Token
    authentication stays on; Ray's notice of it at every start does not reach the terminal.
    """
    import ray
    import ray.data

    # Progress bars redraw many times a second: in logs and CI output they are noise.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.data.DataContext.get_current().enable_progress_bars = False
    _quiet_ray_data_console()
    if ray.is_initialized():
        return
    # A local instance binds to loopback only (it picks eth0 otherwise).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if not is_local():
        ray.init(log_to_driver=True)
    else:
        _quiet_token_notice()
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
                 _node_ip_address="127.0.0.1", configure_logging=False)


def _not_the_token_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def _quiet_token_notice() -> None:
    """A new local instance turns token authentication on and says so at every start: the notice stays off the
    terminal (the authentication stays on; Ray's warning that it is off would still show)."""
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if _not_the_token_notice not in notice.filters:
        notice.addFilter(_not_the_token_notice)


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
