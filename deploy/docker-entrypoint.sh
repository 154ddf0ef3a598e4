#!/bin/sh
# Entry point of the masactrl-animate image: the first argument picks the role.
#
#   worker          Prefect worker of pool $MASACTRL_WORK_POOL (type $MASACTRL_WORK_POOL_TYPE), the default
#   server          Prefect server (API + UI) on 0.0.0.0:$PREFECT_SERVER_API_PORT
#   setup           one-shot: work pool, GPU concurrency limit, `prefect deploy --all` from deploy/prefect.yaml
#                   (target $MASACTRL_DEPLOY_TARGET: local | docker | kubernetes)
#   dask-scheduler  Dask scheduler on :8786, dashboard (and /health) on :8787
#   dask-worker     GPU Dask worker(s) for $DASK_SCHEDULER_ADDRESS: one per visible GPU, each offering GPU=1
#   anything else   executed as given (e.g. `bash`, `masactrl-animate run job.yaml`)
#
# Settings come from the environment only (see deploy/README.md); nothing secret is baked in.
# MASACTRL_ENTRYPOINT_DRY_RUN=1 prints the command instead of running it (tests).
set -eu

DATA="${MASACTRL_DATA:-/data}"
ROLE_FILE="${MASACTRL_ROLE_FILE:-/tmp/masactrl-role}"
POOL="${MASACTRL_WORK_POOL:-gpu-local}"
POOL_TYPE="${MASACTRL_WORK_POOL_TYPE:-process}"
HERE="$(cd "$(dirname "$0")" && pwd)"

run() {
    if [ "${MASACTRL_ENTRYPOINT_DRY_RUN:-0}" = "1" ]; then
        echo "$*"
        return 0
    fi
    "$@"
}

run_exec() {
    if [ "${MASACTRL_ENTRYPOINT_DRY_RUN:-0}" = "1" ]; then
        echo "$*"
        exit 0
    fi
    exec "$@"
}

has_gpu() {
    python -c "import sys, torch; sys.exit(0 if torch.cuda.device_count() > 0 else 1)" 2>/dev/null
}

has_dask_cuda() {
    python -c "import dask_cuda" 2>/dev/null
}

role="${1:-worker}"
[ "$#" -gt 0 ] && shift

# The shared volume's layout; relative job folders ("out", "inbox") point here (see Dockerfile).
if [ "${MASACTRL_ENTRYPOINT_DRY_RUN:-0}" != "1" ] && [ -d "$DATA" ] && [ -w "$DATA" ]; then
    mkdir -p "$DATA/out" "$DATA/inbox" "$DATA/inputs" "$DATA/models" "$DATA/cache" "$DATA/prefect-results"
fi
case "$role" in
    worker | server | setup | dask-scheduler | dask-worker)
        if [ "${MASACTRL_ENTRYPOINT_DRY_RUN:-0}" != "1" ]; then echo "$role" > "$ROLE_FILE" 2>/dev/null || true; fi ;;
esac

case "$role" in
    server)
        run_exec prefect server start --host 0.0.0.0 --port "${PREFECT_SERVER_API_PORT:-4200}" "$@"
        ;;
    worker)
        run_exec prefect worker start --pool "$POOL" --type "$POOL_TYPE" --with-healthcheck "$@"
        ;;
    setup)
        : "${PREFECT_API_URL:?setup needs PREFECT_API_URL (the Prefect server to configure)}"
        cd "$HERE/.."
        if run prefect work-pool inspect "$POOL" >/dev/null 2>&1; then
            echo "work pool $POOL exists"
        elif [ -n "${MASACTRL_WORK_POOL_TEMPLATE:-}" ]; then
            run prefect work-pool create "$POOL" --type "$POOL_TYPE" --base-job-template "$MASACTRL_WORK_POOL_TEMPLATE"
        else
            run prefect work-pool create "$POOL" --type "$POOL_TYPE"
        fi
        run python -c "import sys; from flows.execution.gpu_claims import ensure_gpu_limit; print('GPU limit', ensure_gpu_limit(None, int(sys.argv[1])), '=', sys.argv[1])" "${MASACTRL_GPU_LIMIT:-1}"
        deploy_file="${MASACTRL_DEPLOY_FILE:-deploy/prefect.yaml}"
        target="${MASACTRL_DEPLOY_TARGET:-local}"
        if [ "$target" != "local" ]; then
            # Same deployments, another target of deploy/prefect.yaml (docker | kubernetes).
            case "$target" in docker | kubernetes) ;; *) echo "MASACTRL_DEPLOY_TARGET: '$target' is not local, docker or kubernetes" >&2; exit 2 ;; esac
            retargeted="${TMPDIR:-/tmp}/prefect.$target.yaml"
            sed "s/<<: \*local\b/<<: *$target/" "$deploy_file" > "$retargeted"
            deploy_file="$retargeted"
        fi
        run_exec prefect --no-prompt deploy --all --prefect-file "$deploy_file" "$@"
        ;;
    dask-scheduler)
        run_exec dask scheduler --port "${DASK_SCHEDULER_PORT:-8786}" --dashboard-address ":${DASK_DASHBOARD_PORT:-8787}" "$@"
        ;;
    dask-worker)
        : "${DASK_SCHEDULER_ADDRESS:?dask-worker needs DASK_SCHEDULER_ADDRESS, e.g. tcp://dask-scheduler:8786}"
        # GPU=1 per worker process: a worker never runs two frame chunks at once (flows/execution/runners.py).
        if [ "${DASK_WORKER_CPU_ONLY:-0}" != "1" ] && has_dask_cuda && has_gpu; then
            run_exec dask cuda worker "$DASK_SCHEDULER_ADDRESS" --nthreads "${DASK_WORKER_THREADS:-1}" \
                --resources "GPU=1" --name "${DASK_WORKER_NAME:-$(hostname)}" "$@"
        else
            run_exec dask worker "$DASK_SCHEDULER_ADDRESS" --nworkers "${DASK_WORKER_PROCESSES:-1}" \
                --nthreads "${DASK_WORKER_THREADS:-1}" --resources "GPU=1" "$@"
        fi
        ;;
    *)
        run_exec "$role" "$@"
        ;;
esac
