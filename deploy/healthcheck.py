#!/usr/bin/env python
"""Container health checks of the masactrl-animate image (standard library only, plus distributed).

    healthcheck.py http URL                  200 from URL (Prefect /api/health, worker :8080/health,
                                             Dask scheduler :8787/health)
    healthcheck.py dask-workers SCHEDULER    the scheduler knows at least --min-gpu-workers workers
                   [--min-gpu-workers N]     offering the GPU resource; with --local only workers of
                   [--local]                 this host count (a GPU worker container's own check)
    healthcheck.py auto                      the check of the role the entry point started
                                             (written to $MASACTRL_ROLE_FILE, /tmp/masactrl-role)

Exit status 0 = healthy, 1 = unhealthy (the reason on stderr).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.error
import urllib.request

GPU_RESOURCE = "GPU"


def check_http(url: str, timeout: float = 5.0) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - operator-given URL
            status = response.status
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(f"{url} unreachable: {exc}") from None
    if status != 200:
        raise RuntimeError(f"{url} answered HTTP {status}")
    return f"{url} OK"


def _own_hosts() -> set[str]:
    hosts = {"127.0.0.1", "localhost", socket.gethostname()}
    try:
        hosts.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return hosts


def _host_of(address: str) -> str:
    rest = address.split("://", 1)[-1]
    return rest.rsplit(":", 1)[0].strip("[]")


def check_dask_workers(scheduler: str, min_gpu_workers: int = 1, local: bool = False, timeout: float = 10.0) -> str:
    from distributed import Client

    with Client(scheduler, timeout=timeout, set_as_default=False) as client:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
    hosts = _own_hosts() if local else None
    gpu_workers = [
        address
        for address, info in workers.items()
        if float((info.get("resources") or {}).get(GPU_RESOURCE, 0)) >= 1
        and (hosts is None or _host_of(address) in hosts)
    ]
    where = " on this host" if local else ""
    if len(gpu_workers) < min_gpu_workers:
        raise RuntimeError(
            f"{len(gpu_workers)} worker(s){where} offer {GPU_RESOURCE} at {scheduler} "
            f"({len(workers)} connected), need {min_gpu_workers}"
        )
    return f"{len(gpu_workers)} GPU worker(s){where} at {scheduler}"


def check_role(role: str) -> str:
    if role == "server":
        return check_http(f"http://127.0.0.1:{os.environ.get('PREFECT_SERVER_API_PORT', '4200')}/api/health")
    if role == "worker":
        return check_http(f"http://127.0.0.1:{os.environ.get('PREFECT_WORKER_WEBSERVER_PORT', '8080')}/health")
    if role == "dask-scheduler":
        return check_http(f"http://127.0.0.1:{os.environ.get('DASK_DASHBOARD_PORT', '8787')}/health")
    if role == "dask-worker":
        return check_dask_workers(os.environ["DASK_SCHEDULER_ADDRESS"], 1, local=True)
    if role == "setup":
        return "setup is a one-shot job"
    raise RuntimeError(f"unknown role {role!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="check", required=True)
    p = sub.add_parser("http")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=5.0)
    p = sub.add_parser("dask-workers")
    p.add_argument("scheduler")
    p.add_argument("--min-gpu-workers", type=int, default=1)
    p.add_argument("--local", action="store_true")
    p.add_argument("--timeout", type=float, default=10.0)
    sub.add_parser("auto")
    args = parser.parse_args(argv)
    try:
        if args.check == "http":
            message = check_http(args.url, args.timeout)
        elif args.check == "dask-workers":
            message = check_dask_workers(args.scheduler, args.min_gpu_workers, args.local, args.timeout)
        else:
            role_file = os.environ.get("MASACTRL_ROLE_FILE", "/tmp/masactrl-role")
            try:
                with open(role_file) as fh:
                    role = fh.read().strip()
            except OSError:
                raise RuntimeError(f"no role recorded in {role_file}; the entry point has not started") from None
            message = check_role(role)
    except Exception as exc:  # noqa: BLE001 - every failure is "unhealthy"
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
