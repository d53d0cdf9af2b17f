# syntax=docker/dockerfile:1
# The sepconv image: one image for the API (`serve`, the default command) and the Celery workers (`worker`).
#
#   docker build -t sepconv .
#   docker run -p 8000:8000 -e SEPCONV_API_KEYS=<a key of 16+ characters> -v sepconv-data:/data sepconv
#   docker run ... sepconv worker          # a Celery worker (needs SEPCONV_BROKER_URL, PostgreSQL and S3)
#   podman build --format docker -t sepconv .   # podman's default (OCI) format would drop the HEALTHCHECK
#
# Build arguments: PYTHON_IMAGE (the base), TORCH_VERSION, TORCH_INDEX_URL (where CPU torch comes from);
# `make compose-test` points the last at a local index (README, "What was verified").
#
# Alone (no broker) the container runs the embedded default: SQLite and files under /data (mount a volume), worker
# processes started by the server. docker-compose.yml runs the scaled setup (PostgreSQL, Redis, MinIO).
#
# Three stages: `deps` installs torch and the dependencies into a virtual environment, `build` installs the
# project next to it (/opt/sepconv), and the last copies only those two onto a fresh slim base.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
# torch is installed first, from PyTorch's CPU index: the project's torch range is then already satisfied and
# pip does not pull the CUDA build from PyPI (gigabytes of libraries a CPU image never loads).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
# The project's dependencies, read from pyproject.toml alone: this stage (the slow one, about 1 GB) is built
# again when they change, not at every change of the source.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
# What a CPU deployment never loads from torch (about 200 MB): C++ headers (for compiling extensions), C++ test
# binaries and data, protoc. torch_shm_manager stays (tensors shared between processes). The project itself goes
# to /opt/sepconv (next stage), which this .pth puts on the environment's path.
RUN site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && rm -rf "$site/torch/include" "$site/torch/test" "$site/torch/lib/libtorchbind_test.so" \
    && find "$site/torch/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} + \
    && echo /opt/sepconv > "$site/sepconv.pth"

FROM deps AS build
COPY README.md ./
COPY converter ./converter
COPY service ./service
# Not editable, and apart from the environment: the image holds the installed package, not this source tree, and
# a change of the source makes a layer of a few MB instead of a new copy of the environment.
RUN pip install --no-deps --target /opt/sepconv . && pip check

FROM ${PYTHON_IMAGE}
# tini is PID 1: it forwards docker's SIGTERM to sepconv (graceful stop) and reaps orphaned processes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 sepconv \
    && useradd --system --uid 10001 --gid sepconv --create-home --home-dir /home/sepconv \
       --shell /usr/sbin/nologin sepconv \
    && mkdir /data && chown sepconv:sepconv /data
COPY --from=deps /opt/venv /opt/venv
COPY --from=build /opt/sepconv /opt/sepconv
COPY --chmod=0755 deploy/healthcheck.py /usr/local/bin/sepconv-healthcheck
ENV PATH=/opt/sepconv/bin:/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SEPCONV_DATA_DIR=/data \
    SEPCONV_PORT=8000
# The installed package must carry its Alembic migrations (a non-editable install drops what is not declared).
RUN python -c "from service.core.db import MIGRATIONS as m; \
assert (m / 'env.py').is_file() and (m / 'script.py.mako').is_file() and any((m / 'versions').glob('0*.py')), m" \
    && sepconv --version

USER sepconv
WORKDIR /home/sepconv
# /data holds the SQLite database and files of the embedded default (mount a volume there: `-v sepconv-data:/data`);
# unused when PostgreSQL and S3 are configured. No VOLUME instruction: it gave every compose container an unused
# anonymous volume, which `podman-compose down -v` (and `docker compose down` without -v) leaves behind.
EXPOSE 8000
# `serve` answers /healthz; `worker` answers a Celery ping through the broker (see deploy/healthcheck.py).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["sepconv-healthcheck"]
ENTRYPOINT ["tini", "--", "sepconv"]
# Every address, on the command line rather than in SEPCONV_HOST: the workers (same image) then see no listening
# address, and no warning about one without API keys. Without keys, serve still falls back to loopback.
CMD ["serve", "--host", "0.0.0.0"]
