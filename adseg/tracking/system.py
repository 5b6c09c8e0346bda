"""System metrics of a fold's run: MLflow's own monitors (CPU and memory, disk, network, and
the GPUs where ``nvidia-ml-py`` (NVIDIA) or ``pyrsmi`` (AMD) finds one), sampled in a daemon
thread and written through the run's journal, so a store that cannot be reached loses none.

The names are MLflow's (``system/cpu_utilization_percentage``,
``system/system_memory_usage_megabytes``, ``system/gpu_0_utilization_percentage``, ...), so
the UI's system-metrics tab shows them. Each sample is one step, counted on from the run's
last sample when training resumes.
"""

from __future__ import annotations

import threading

from adseg.log import logger
from adseg.tracking.journal import Journal
from adseg.tracking.store import short_error

PREFIX = "system/"
"""The prefix of MLflow's ``SystemMetricsMonitor`` (``mlflow.system_metrics``)."""


def peak_memory(device) -> dict[str, float]:
    """The job's peak memory in MB, for its run's last metrics: the process's resident set
    (``train/peak_memory_mb``: Linux's ``VmHWM``, elsewhere ``getrusage``) and, on a CUDA
    device, the most torch ever held allocated there (``train/peak_gpu_memory_mb``)."""
    import resource
    import sys
    from pathlib import Path

    peak = None
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    if peak is None:  # ru_maxrss: bytes on macOS, KiB elsewhere
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = rss / 2**20 if sys.platform == "darwin" else rss / 1024
    found = {"train/peak_memory_mb": round(peak, 1)}
    if str(device).startswith("cuda"):
        import torch

        allocated = torch.cuda.max_memory_allocated(device)
        found["train/peak_gpu_memory_mb"] = round(allocated / 2**20, 1)
    return found


def monitors() -> list:
    """MLflow's monitors of this machine: CPU and memory, disk, network, and the first kind
    of GPU monitor that finds its library and a GPU (as ``SystemMetricsMonitor`` picks)."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
    from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor

    found = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    for gpu in (GPUMonitor, ROCMMonitor):
        try:
            found.append(gpu())
            break
        except Exception:  # noqa: BLE001, S112 - no library or no GPU of this kind
            continue
    return found


class SystemMetrics:
    """Samples every ``interval_s`` seconds into ``journal`` (metrics with ``system`` set,
    sent with the run's other events), from :meth:`start` until :meth:`stop`."""

    def __init__(self, journal: Journal, interval_s: float) -> None:
        self.journal = journal
        self.interval_s = float(interval_s)
        self.step = journal.next_system_step()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        found = monitors()
        for m in found:  # the first CPU reading is since the last one: take it now
            m.collect_metrics()
            m.clear_metrics()
        self._thread = threading.Thread(
            target=self._run, args=(found,), name="adseg-system-metrics", daemon=True
        )
        self._thread.start()

    def _run(self, found: list) -> None:
        try:
            while True:
                stopping = self._stop.wait(self.interval_s)
                self.sample(found)
                if stopping:
                    return
        except Exception as err:  # noqa: BLE001 - a side job: training goes on without it
            logger.warning("system metrics stopped: %s", short_error(err))

    def sample(self, found: list) -> None:
        """One step: each monitor's reading since the last, under MLflow's names."""
        values: dict[str, float] = {}
        for m in found:
            m.collect_metrics()
            values |= {PREFIX + k: v for k, v in m.aggregate_metrics().items()}
            m.clear_metrics()
        self.journal.metrics(values, step=self.step, system=True)
        self.step += 1

    def stop(self) -> None:
        """Take a last sample and stop (waits for the thread)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=60)
        self._thread = None
