# SimAM-Viz demo: the Streamlit app with the bundled demo models baked in.
#
#   docker build -t simam-viz .                                      # CUDA wheels (PyPI's torch)
#   docker build -t simam-viz:cpu --build-arg TORCH_REQUIREMENTS=requirements-cpu.txt \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .   # small CPU image
#   docker run --init -p 8501:8501 simam-viz                         # CPU
#   docker run --init --gpus all -p 8501:8501 simam-viz              # GPU
#   docker run --init -p 8501:8501 -v ~/weights:/app/checkpoints/official:ro simam-viz
#
# Official ImageNet weights are never baked in by default: mount them (above), or name
# redistributable ones in FETCH to download them at build time (the build refuses the rest).
FROM python:3.11-slim

# Where torch and torchvision come from. Empty: the default index (PyPI ships CUDA builds, so
# `--gpus all` works). A CPU-only index gives an image about 5 GB smaller.
ARG TORCH_INDEX_URL=""
# Which file pins torch and torchvision: requirements.txt (PyPI's CUDA builds, for GPU nodes) or
# requirements-cpu.txt (CPU-only builds, for CPU nodes: about 5 GB smaller, faster to pull).
# Every other pin always comes from requirements.txt. TORCH_FIND_LINKS: a folder of torch
# wheels (mounted into the build) to take them from instead of an index.
ARG TORCH_REQUIREMENTS=requirements.txt
ARG TORCH_FIND_LINKS=""
# Registry names of official checkpoints to fetch at build time (redistributable ones only).
ARG FETCH=""
# Extra package sources for air-gapped builds (a mounted wheel mirror); pip reads them from the
# environment. The CA bundle makes pip trust a TLS-inspecting proxy whose CA the base trusts.
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_FIND_LINKS=""
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MPLCONFIGDIR=/tmp/matplotlib \
    SIMAM_VIZ_CHECKPOINTS=/app/checkpoints

RUN python3 -m venv /opt/venv && pip install --upgrade pip

COPY requirements.txt requirements-cpu.txt /tmp/
# torch first, from the chosen pins and index; then the other pins of requirements.txt (its own
# torch lines left out, so that a CPU build keeps its torch)
RUN pip install ${TORCH_INDEX_URL:+--index-url $TORCH_INDEX_URL} \
        ${TORCH_FIND_LINKS:+--find-links $TORCH_FIND_LINKS} \
        $(grep -E '^(torch|torchvision)==' /tmp/$TORCH_REQUIREMENTS) \
    && grep -vE '^(torch|torchvision)==' /tmp/requirements.txt > /tmp/requirements-rest.txt \
    && pip install -r /tmp/requirements-rest.txt

RUN useradd --create-home --uid 10001 app
WORKDIR /app
COPY --chown=root:root pyproject.toml setup.py README.md ./
COPY --chown=root:root simam_viz ./simam_viz
COPY --chown=root:root app ./app
COPY --chown=root:root .streamlit ./.streamlit
COPY --chown=root:root checkpoints ./checkpoints
RUN pip install --no-deps -e . \
    && if [ -n "$FETCH" ]; then simam-viz fetch --redistributable-only $FETCH; fi \
    && mkdir -p /app/checkpoints/official && chmod -R a+rX /app \
    && python -c "import simam_viz.weights.catalog as c; print([i.key for i in c.available()])"

# A published image is a public demo: no checkpoint-download panel (visitors cannot make the
# server fetch weights). `make run` keeps it; `docker run -e SIMAM_VIZ_FETCH=1` turns it on.
ENV SIMAM_VIZ_FETCH=0

USER app
EXPOSE 8501
# Liveness, not readiness: slim images have no curl, so Python asks Streamlit's health endpoint.
# /readyz (503 until the start-up warm-up has loaded the models, 200 after; 503 for good if the
# warm-up failed) is for routing: compose's healthcheck, the proxy and Kubernetes' readiness
# probe use it and keep visitors away from a cold replica. Docker, Swarm and autoheal treat
# "unhealthy" as "restart it": a warm-up that failed (a missing or broken checkpoint) would fail
# again after each restart, so this check catches what a restart does cure, a process that no
# longer answers, and leaves a failed warm-up to readiness (out of rotation, reason in the log).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).read() != b'ok')"]
CMD ["streamlit", "run", "app/serve.py", "--server.address=0.0.0.0", "--server.port=8501"]
