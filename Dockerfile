# Edge image: the inspection server on CPU (no torch). For NVIDIA GPUs build with
#   --build-arg ORT_PACKAGE=onnxruntime-gpu --build-arg BASE=<a CUDA runtime image with Python 3.11>
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG ORT_PACKAGE=onnxruntime
# ORT_DISABLE_TELEMETRY: onnxruntime calls Microsoft by default (lineside_inspect sets it
# too); a line box calls nobody
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 ORT_DISABLE_TELEMETRY=1 \
    LINESIDE_HOST=0.0.0.0 LINESIDE_PORT=8000 LINESIDE_DATA_DIR=/var/lib/lineside

WORKDIR /app
COPY pyproject.toml README.md ./
COPY inspect ./inspect
COPY training ./training
# [line]: the PLC handshake (OPC UA, Modbus TCP) and MQTT events; [postgres]: a store in
# PostgreSQL (database_url), as the README offers
RUN pip install --upgrade pip && pip install '.[line,postgres]' && \
    if [ "$ORT_PACKAGE" != "onnxruntime" ]; then pip uninstall -y onnxruntime && pip install "$ORT_PACKAGE"; fi && \
    python -c "import lineside_inspect.server.app, sys; assert 'torch' not in sys.modules"
COPY models ./models
COPY configs ./configs
COPY datasets/deeppcb-sample ./datasets/deeppcb-sample

RUN useradd --system --uid 10001 lineside && mkdir -p /var/lib/lineside && \
    chown lineside /var/lib/lineside && chmod 0750 /var/lib/lineside
# the store, reviews, references and the box id: kept across a new container (an upgrade)
# only in a volume: docker run -v lineside-data:/var/lib/lineside
VOLUME /var/lib/lineside
USER lineside
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import os,sys,urllib.request; port = os.environ.get('LINESIDE_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=2).status == 200 else 1)"
# Listening beyond loopback needs API keys: pass LINESIDE_API_KEYS (see README).
CMD ["lineside", "serve", "--config", "configs/serve.yaml", "--host", "0.0.0.0"]
