# syntax=docker/dockerfile:1
#
# Two images from one file:
#
#   docker build --target pipeline -t ctr-pipeline .
#       The project on python:3.10-slim with the pinned TFX stack, entry point `ctr-pipeline`.
#       This is the image of every step of the Kubeflow pipeline
#       (`ctr-pipeline compile --runner kubeflow --image <this image> ...`); its ENTRYPOINT is
#       replaced there by TFX's executor command.
#
#   docker build --target serving -t ctr-serving .
#       TensorFlow Serving 2.16.1 with the pushed models of the serving root (default:
#       serving_models/, i.e. <serving_root>/<model>/<version>/) copied to /models and a
#       models.config listing them with /models paths. Build it after a pipeline run pushed models
#       (or pass --build-arg SERVING_ROOT=<directory inside the build context>).
#       docker run -p 8500:8500 -p 8501:8501 ctr-serving

# ---- pipeline: the project and its pinned stack ----------------------------------------------
FROM python:3.10-slim AS pipeline

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /opt/ctr-pipeline

# the pinned stack first: this layer is reused until the pins change
COPY requirements/ requirements/
RUN pip install -c requirements/constraints-lock.txt -r requirements/constraints-top.txt

COPY setup.py README.md ./
COPY contract/ contract/
COPY pipeline/ pipeline/
COPY models/ models/
COPY ingest/ ingest/
COPY transforms/ transforms/
COPY serving/ serving/
RUN pip install --no-deps . \
    && ctr-pipeline --help > /dev/null

ENTRYPOINT ["ctr-pipeline"]
CMD ["--help"]

# ---- serving-config: models.config with the paths the model server sees ------------------------
FROM pipeline AS serving-config

ARG SERVING_ROOT=serving_models
COPY ${SERVING_ROOT}/ /models/
RUN python -c "from serving.model_config import write_models_config; print(open(write_models_config('/models', container_root='/models')).read())"

# ---- serving: TensorFlow Serving with the pushed models -----------------------------------------
FROM tensorflow/serving:2.16.1 AS serving

COPY --from=serving-config /models/ /models/
EXPOSE 8500 8501
ENTRYPOINT ["tensorflow_model_server"]
CMD ["--port=8500", "--rest_api_port=8501", "--model_config_file=/models/models.config", "--model_config_file_poll_wait_seconds=60"]
