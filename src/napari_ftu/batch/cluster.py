"""Dask clusters: a local one sized to the machine (one worker per GPU), or a scheduler reached
over TLS (plain TCP only when the user accepts that anyone who reaches it can run code)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from napari_ftu.errors import InputError


def visible_gpus() -> list[str]:
    """CUDA devices this machine shows (respecting ``CUDA_VISIBLE_DEVICES``); torch is imported
    only where the CUDA driver reports a device."""
    from napari_ftu.models.backends import gpu_present

    if not gpu_present():
        return []
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        n = 0
    if not n:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in env.split(",") if d.strip()] if env else [str(i) for i in range(n)]
    return ids[:n]


def gpu_worker_spec(devices, host: str = "127.0.0.1") -> dict:
    """One single-threaded worker process per GPU, each seeing only its own device."""
    from distributed import Nanny

    return {f"gpu-{d}": {"cls": Nanny, "options": {"nthreads": 1, "host": host, "resources": {"GPU": 1},
                                                    "env": {"CUDA_VISIBLE_DEVICES": str(d)}}}
            for d in devices}


def _temporary_security():
    """Fresh self-signed TLS credentials held by this process only: the scheduler and workers
    accept no connection without them, so another local user cannot submit tasks (which would
    run as the user who started the batch)."""
    try:
        from distributed.security import Security

        return Security.temporary()
    except ImportError as exc:  # Security.temporary needs the 'cryptography' package
        raise InputError(f"a local Dask cluster needs TLS credentials, which need the 'cryptography' "
                         f"package ({exc})") from None


def local_cluster(n_workers: int | None = None, devices=None, host: str = "127.0.0.1"):
    """A cluster on this machine, secured with temporary TLS credentials (``cluster.security``):
    one worker per GPU (device pinned), else one single-threaded worker process per core (torch
    then uses one thread in each)."""
    from distributed import LocalCluster, Scheduler, SpecCluster

    security = _temporary_security()  # silence_logs=50: workers' log lines (heartbeats lost at close) stay hidden
    devices = visible_gpus() if devices is None else list(devices)
    if devices:
        workers = gpu_worker_spec(devices, host)
        for spec in workers.values():
            spec["options"]["security"] = security
        return SpecCluster(workers=workers, silence_logs=50, security=security,
                           scheduler={"cls": Scheduler, "options": {"host": host, "dashboard": False,
                                                                    "protocol": "tls://", "security": security}})
    n = n_workers or os.cpu_count() or 1
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host=host, dashboard_address=None,
                        silence_logs=50, security=security, protocol="tls://")


@dataclass(frozen=True)
class SchedulerAccess:
    """How to reach an existing Dask scheduler: a ``tls://`` address and this client's
    credentials (CA, certificate, key files), or a plain ``tcp://`` address when the user says
    so explicitly (``insecure``): anyone who can reach such a scheduler runs code on its workers."""

    address: str
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    insecure: bool = False

    def security(self):
        """The client's ``distributed.Security``; :class:`InputError` for an address or set of
        credentials that cannot be used."""
        from distributed.security import Security

        address = self.address.strip()
        scheme = address.split("://", 1)[0].lower() if "://" in address else "tcp"
        creds = {"--tls-ca": self.tls_ca, "--tls-cert": self.tls_cert, "--tls-key": self.tls_key}
        if scheme == "tls":
            missing = [flag for flag, value in creds.items() if not value]
            if missing:
                raise InputError(f"--scheduler {address}: a tls:// scheduler needs this client's credentials: "
                                 f"give {', '.join(missing)}")
            for flag, value in creds.items():
                if not Path(value).is_file():
                    raise InputError(f"{value}: no such file (given as {flag})")
            return Security(tls_ca_file=str(self.tls_ca), tls_client_cert=str(self.tls_cert),
                            tls_client_key=str(self.tls_key), require_encryption=True)
        if scheme == "tcp":
            if not self.insecure:
                raise InputError(f"--scheduler {address}: a plain tcp:// scheduler has no authentication (anyone "
                                 f"who reaches it runs code as its workers' user); use tls:// with --tls-ca, "
                                 f"--tls-cert and --tls-key, or pass --insecure-scheduler if the network is yours")
            if any(creds.values()):
                raise InputError(f"--scheduler {address}: --tls-ca/--tls-cert/--tls-key need a tls:// address")
            return Security()
        raise InputError(f"--scheduler {address}: unsupported address; give tls://HOST:PORT "
                         f"(or tcp://HOST:PORT with --insecure-scheduler)")


def connect(access: SchedulerAccess, timeout: float = 30):
    """A client on an existing scheduler, or a :class:`InputError` saying why not (one line)."""
    from distributed import Client

    security = access.security()
    try:
        return Client(access.address.strip(), timeout=timeout, security=security)
    except (OSError, ValueError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"--scheduler {access.address}: cannot connect ({reason})") from None


@contextlib.contextmanager
def batch_client(scheduler: str | SchedulerAccess | None = None, n_workers: int | None = None):
    """A client on ``scheduler`` (an existing cluster: an address or a :class:`SchedulerAccess`),
    else on a new local cluster, secured with temporary TLS credentials and closed afterwards."""
    from distributed import Client

    if scheduler:
        access = scheduler if isinstance(scheduler, SchedulerAccess) else SchedulerAccess(scheduler)
        client = connect(access)
        try:
            yield client
        finally:
            client.close()
        return
    cluster = local_cluster(n_workers)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()
