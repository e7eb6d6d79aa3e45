# people-counter, production image: NVDEC decode, CuPy preprocessing, TensorRT inference.
# (Not built in this project's sandbox: no machine here can pull the base image. Keep it minimal.)
#
#   docker build -t people-counter .
#   # headless (default): counts into SQLite under /data; engines built on first start into a volume
#   docker run --rm --gpus all -v pc-engines:/app/.cache/engines -v "$PWD/data:/data" \
#       -v /path/to/models:/app/.cache/models -v /path/to/videos:/videos people-counter \
#       headless --config /app/config/tensorrt.yaml --source /videos/cam.mp4 --db /data/people.db
#   # operator window through X11 forwarding (run `xhost +local:` on the host first)
#   docker run --rm --gpus all -e DISPLAY -v /tmp/.X11-unix:/tmp/.X11-unix \
#       -v pc-engines:/app/.cache/engines people-counter gui --config /app/config/tensorrt.yaml
#
# TensorRT base image with CUDA 13 (TensorRT 10.x and its Python bindings); pick the tag that
# matches the host driver (CUDA 13 needs driver >= 580).
ARG BASE=nvcr.io/nvidia/tensorrt:25.10-py3
FROM ${BASE}

# NVDEC needs the "video" driver capability; PySide6 (GUI) needs the X11/GL client libraries.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility,video \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        libgl1 libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 \
        libxcb-render-util0 libxcb-image0 libfontconfig1 libdbus-1-3 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY app app
COPY config config
COPY gpu gpu
COPY models models
COPY pipeline pipeline
COPY storage storage
COPY ui ui
COPY main.py ./
# The app with its GUI extra, plus the GPU stack (CuPy for CUDA 13, NVDEC, ONNX Runtime CUDA as
# the explicit second backend). TensorRT's Python package comes with the base image.
RUN python3 -m pip install ".[gui]" "cupy-cuda13x>=14" "PyNvVideoCodec>=2.0" "onnxruntime-gpu>=1.20"
# The demo models and 4K clip (PyPI and the distribution's opencv-doc, at build time only). The
# users' own ONNX models are mounted where config/tensorrt.yaml points (/app/.cache/models).
RUN python3 main.py fetch-assets

# Engines are built at first start (python main.py build-engines keeps engines whose sidecar
# matches the TensorRT version, GPU and ONNX, so later starts skip the build).
VOLUME ["/app/.cache/engines", "/data"]
ENV PC_CONFIG=/app/config/tensorrt.yaml
ENTRYPOINT ["/bin/sh", "-c", "python3 main.py build-engines --config \"${PC_CONFIG}\" && exec python3 main.py \"$@\"", "--"]
CMD ["headless", "--config", "/app/config/tensorrt.yaml", "--db", "/data/people.db"]
