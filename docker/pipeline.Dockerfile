# Training and export (`docker compose run --rm training ...`, `docker compose run --rm export`).
# Only the dependencies live in the image: the repository is mounted at /workspace at run time,
# so output/ and model_repository/ land in the checkout.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface

WORKDIR /workspace
# dev.txt includes bot.txt (`-r bot.txt`), so both are copied. PyPI's torch wheel for Linux
# carries its own CUDA runtime: with the GPU reserved in compose, training runs on it.
COPY requirements/bot.txt requirements/dev.txt requirements/
RUN pip install -r requirements/dev.txt
