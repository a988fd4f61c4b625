"""`USE_RAY=1 lmforge train CONFIG`: the same training, run by Ray Train on the workers of a Ray cluster.

Ray Train starts `ray_num_workers` workers with `resources_per_worker` each (placed by `placement_strategy`), joins
them into one torch process group (gloo without GPUs, NCCL with), and each worker runs the run exactly as a
torchrun rank would: the main worker prepares the data first and alone writes the outputs. The cluster is the one
`RAY_ADDRESS` (or `ray_init_kwargs: {address: ...}`) names, else a local instance started for this run, reachable
only from this machine and stopped at its end. `output_dir` must be on a file system every worker's node shares.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config import RunConfig

logger = get_logger(__name__)

INSTALL = 'pip install "lmforge[ray]"'
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
# Settings the workers need from this process's environment (a remote cluster's workers do not inherit it).
_FORWARDED = ("HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_CACHE", "HF_ENDPOINT", "TRANSFORMERS_OFFLINE",
              "LMFORGE_VERBOSITY", "LMFORGE_PROGRESS", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM",
              "TORCH_EXTENSIONS_DIR", "CUDA_VISIBLE_DEVICES")


def wanted() -> bool:
    return os.environ.get("USE_RAY", "").strip().lower() in ("1", "true", "y", "yes")


def check(cfg: RunConfig) -> None:
    """What a Ray run needs, before Ray starts."""
    train = cfg.train
    import importlib.util

    if train.ray_num_workers < 1:
        raise UserError(f"ray_num_workers must be at least 1, got {train.ray_num_workers}.")
    if train.placement_strategy not in PLACEMENT_STRATEGIES:
        raise UserError(f"placement_strategy '{train.placement_strategy}' is not one of "
                        f"{', '.join(PLACEMENT_STRATEGIES)}.")
    if train.do_predict:
        raise UserError("USE_RAY=1 trains; run do_predict without USE_RAY.")
    for key, value in (train.resources_per_worker or {}).items():
        if not isinstance(value, (int, float)) or value < 0:
            raise UserError(f"resources_per_worker: '{key}' must be a non-negative number, got {value!r}.")
    if train.ray_storage_filesystem:
        raise UserError("ray_storage_filesystem is not supported: give ray_storage_path a folder every node "
                        "shares, and remove ray_storage_filesystem.")
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.train") is None:
        raise UserError(f"USE_RAY=1 needs Ray Train, which is not installed: {INSTALL}.")


def launch(cfg: RunConfig) -> int:
    """Train `cfg` on Ray; return the exit code (UserError with the first failing worker's error)."""
    check(cfg)
    import ray

    local = not (os.environ.get("RAY_ADDRESS") or (cfg.train.ray_init_kwargs or {}).get("address"))
    temp = tempfile.mkdtemp(prefix="lmforge-ray-") if local else None
    _init(ray, cfg, temp)
    try:
        return _fit(ray, cfg)
    finally:
        if local:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def _init(ray, cfg: RunConfig, temp: str | None) -> None:
    """Connect to the cluster, or start a local instance with its files in `temp`."""
    kwargs = dict(cfg.train.ray_init_kwargs or {})
    if temp:
        # Only this machine reaches the instance, so Ray's token (which it would write into the home folder) is
        # not needed; its files go to a temporary folder of this run, not to a shared /tmp/ray.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        kwargs.setdefault("_node_ip_address", "127.0.0.1")
        kwargs.setdefault("include_dashboard", False)
        kwargs.setdefault("_temp_dir", temp)
    kwargs.setdefault("logging_level", "WARNING")
    kwargs.setdefault("configure_logging", True)
    try:
        ray.init(**kwargs)
    except (ValueError, TypeError, ConnectionError, RuntimeError) as err:
        where = os.environ.get("RAY_ADDRESS") or kwargs.get("address") or "a local instance"
        raise UserError(f"Cannot start Ray ({where}) with ray_init_kwargs {cfg.train.ray_init_kwargs or {}}: "
                        f"{str(err).splitlines()[0]}") from None


def _resources(ray, cfg: RunConfig) -> dict:
    """`resources_per_worker`, or one GPU each on a cluster that has GPUs and one CPU otherwise; UserError when the
    cluster cannot hold the workers (Ray would wait for them forever)."""
    total = ray.cluster_resources()
    per_worker = dict(cfg.train.resources_per_worker or ({"GPU": 1} if total.get("GPU") else {"CPU": 1}))
    workers = cfg.train.ray_num_workers
    for key, amount in per_worker.items():
        if amount * workers > total.get(key, 0):
            raise UserError(f"The Ray cluster has {total.get(key, 0):g} {key} in all; ray_num_workers {workers} x "
                            f"resources_per_worker {per_worker} needs {amount * workers:g}. Lower ray_num_workers or "
                            "resources_per_worker, or add nodes.")
    return per_worker


def _fit(ray, cfg: RunConfig) -> int:
    from ray.train import RunConfig as RayRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    train = cfg.train
    per_worker = _resources(ray, cfg)
    env = {name: os.environ[name] for name in _FORWARDED if name in os.environ}
    # Ray Train would also send every print() (lmforge's progress lines) through its logger: each line twice.
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"
    storage = Path(train.ray_storage_path).absolute()
    name = train.ray_run_name or Path(train.output_dir).name
    logger.info(f"Training on Ray: {train.ray_num_workers} workers, {per_worker} each ({train.placement_strategy}); "
                f"Ray Train's run state in {storage / name}")
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": cfg, "cwd": os.getcwd(), "env": env},
        scaling_config=ScalingConfig(num_workers=train.ray_num_workers, use_gpu=bool(per_worker.get("GPU")),
                                     resources_per_worker=per_worker, placement_strategy=train.placement_strategy),
        run_config=RayRunConfig(name=name, storage_path=str(storage), worker_runtime_env={"env_vars": env}),
    )
    try:
        trainer.fit()
    except Exception as err:  # Ray's TrainingFailedError: say which worker failed and why, in one line
        raise UserError(_failure(err)) from None
    return 0


def _worker(config: dict) -> None:
    """One Ray Train worker: the process group is up (RANK, WORLD_SIZE, LOCAL_RANK are set); run the training."""
    os.chdir(config["cwd"])
    os.environ.update(config["env"])
    from lmforge.train.run import run

    run(config["cfg"])


def _failure(err: BaseException) -> str:
    failures = getattr(err, "worker_failures", None) or {}
    if failures:
        rank, cause = min(failures.items())
        return f"Ray worker {rank} failed: {_cause_text(cause)}"
    cause = getattr(err, "controller_failure", None) or err
    return f"Ray Train failed: {_cause_text(cause)}"


def _cause_text(err: BaseException) -> str:
    """The worker's own error: lmforge's one line when it raised one, else the exception's first line."""
    seen = err
    for _ in range(8):
        if isinstance(seen, UserError):
            return str(seen)
        nested = getattr(seen, "cause", None) or seen.__cause__
        if nested is None:
            break
        seen = nested
    text = str(seen).strip().splitlines()
    return f"{type(seen).__name__}: {text[-1] if text else ''}"
