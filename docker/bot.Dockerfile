# The Telegram bot: a thin client (tokenizers, numpy, tritonclient, python-telegram-bot). No torch.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BOT_DATA_DIR=/data

WORKDIR /app
COPY requirements/bot.txt requirements/bot.txt
RUN pip install -r requirements/bot.txt

COPY contract/ contract/
COPY client/ client/
COPY bot/ bot/

# Non-root; /data is the SQLite history (a named volume: Docker copies this owner into a new one).
RUN useradd --system --uid 10001 --no-create-home --home-dir /app bot \
 && mkdir -p /data && chown bot:bot /data
USER 10001:10001

# 9100: Prometheus metrics; 8443: webhook (only with `python -m bot --webhook`).
EXPOSE 9100 8443
# Healthy while the metrics endpoint answers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["python", "-c", \
  "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/metrics' % os.getenv('BOT_METRICS_PORT', '9100'))"]
ENTRYPOINT ["python", "-m", "bot"]
