# syntax=docker/dockerfile:1
# hubless: the HTTP service in a small image.
#   docker build -t hubless .
#   docker build -t hubless-faiss --build-arg EXTRAS=faiss .   # with the FAISS backend
#   docker run -p 8000:8000 hubless                      # serves the bundled demo dataset
#   docker run -p 8000:8000 -v hubless-data:/data -v "$PWD/mydata:/data/input:ro" \
#     -e HUBLESS_GALLERY=/data/input/gallery.npy -e HUBLESS_GALLERY_IDS=/data/input/gallery_ids.txt \
#     -e HUBLESS_QUERY_BANK=/data/input/query_bank.npy \
#     -e HUBLESS_GALLERY_BANK=/data/input/gallery_bank.npy -e HUBLESS_API_KEY="$KEY" hubless
# See deploy/README.md (compose, Kubernetes).

ARG PYTHON_IMAGE=python:3.11-slim
# optional extras baked in: "" (exact backend only), "faiss", "milvus", "faiss,export", …
ARG EXTRAS=""

# --- builder: a virtual environment with the package and its runtime dependencies only -------
FROM ${PYTHON_IMAGE} AS builder
ARG EXTRAS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# pyproject.toml names README.md as the long description, so the build needs it
COPY pyproject.toml README.md ./
COPY service ./service
# every dependency ships binary wheels: no compiler here, and no test extras in the image
RUN pip install --no-cache-dir --upgrade pip \
 && pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}" \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# --- runtime: the venv on a clean slim image, run as an unprivileged user --------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HUBLESS_HOST=0.0.0.0 \
    HUBLESS_PORT=8000 \
    HUBLESS_DATA_DIR=/data \
    NUMBA_CACHE_DIR=/tmp/numba-cache
# (numba's compiled kernels, service/algorithms/fused.py: the venv is read-only for the user)
# a fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and volumes can be chowned
RUN groupadd --system --gid 10001 hubless \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin hubless \
 && mkdir -p /data \
 && chown 10001:10001 /data
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
WORKDIR /data
# the change log, snapshots and precompute cache live here; mount a volume to keep them
VOLUME ["/data"]
EXPOSE 8000
# liveness only (the precompute may still run; /readyz says when it is done). No curl in slim.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HUBLESS_PORT', '8000'), timeout=4)"
CMD ["hubless", "serve"]
