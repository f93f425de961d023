"""Prometheus metrics of the Telegram bot; the Grafana dashboard uses these exact names."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

ERROR_KINDS = ("triton_unavailable", "triton_request", "telegram", "database", "unexpected")
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0)
FIRST_TEXT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
DRAFT_RESULTS = ("sent", "failed")
SWITCH_RESULTS = ("followed", "refused")  # a new model version: its tokenizer loaded, or not
# The Bot API calls a reply does not need (bot/botapi.py: OPTIONAL), each exported from the start
OPTIONAL_METHODS = (
    "setMyCommands",
    "deleteWebhook",
    "sendChatAction",
    "sendMessageDraft",
    "sendMessage",
    "answerCallbackQuery",
    "editMessageReplyMarkup",
    "getChatMember",
)
FEEDBACK_VOTES = {1: "up", -1: "down", 0: "withdrawn"}  # bot_feedback_total's `vote`: 👍, 👎, taken back


class Metrics:
    """The bot's metrics in a registry of their own, so that one process may hold several bots."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.replies = Counter("bot_replies", "Replies sent to users", registry=self.registry)
        self.latency = Histogram(
            "bot_reply_latency_seconds",
            "From taking up a message to its reply sent",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_text = Histogram(
            "bot_first_text_seconds",
            "From taking up a message to the first text the "
            "user sees: a draft in private chats, else the reply",
            buckets=FIRST_TEXT_BUCKETS,
            registry=self.registry,
        )
        self.drafts = Counter(
            "bot_drafts",
            "Drafts (sendMessageDraft) of replies being generated, by result",
            ["result"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "bot_generated_tokens", "Tokens generated for sent replies", registry=self.registry
        )
        self.errors = Counter("bot_errors", "Failures by kind", ["kind"], registry=self.registry)
        self.triton_up = Gauge(
            "bot_triton_up", "1 while Triton answers (last reply or health check)", registry=self.registry
        )
        self.model_version = Gauge(
            "bot_model_version",
            "The model version (Triton's version folder) that answered this bot's last step; 0: none yet",
            registry=self.registry,
        )
        self.model_switches = Counter(
            "bot_model_switches",
            "New model versions met: followed (its tokenizer loaded) or refused (the bot cannot use it)",
            ["result"],
            registry=self.registry,
        )
        self.optional_failures = Counter(
            "bot_optional_call_failures",
            "Failed Bot API calls the bot goes on without (menu, typing, drafts, flood notes), by method",
            ["method"],
            registry=self.registry,
        )
        self.skipped = Counter(
            "bot_skipped_messages",
            "Messages left unanswered because a flood filled their chat's waiting line (bot/waiting.py)",
            registry=self.registry,
        )
        self.feedback = Counter(
            "bot_feedback",
            "Users' votes on replies (👍 up, 👎 down, a reaction taken back: withdrawn), each cast or "
            "change counted once under its new value, by the model version that wrote the reply",
            ["version", "vote"],
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        for kind in ERROR_KINDS:  # every label is exported from the start, at 0
            self.errors.labels(kind)
        for result in DRAFT_RESULTS:
            self.drafts.labels(result)
        for result in SWITCH_RESULTS:
            self.model_switches.labels(result)
        for method in OPTIONAL_METHODS:
            self.optional_failures.labels(method)

    def voted(self, version: str | None, vote: int) -> None:
        """A user's vote on a reply of `version` was stored (changed): +1, -1, 0 (withdrawn)."""
        self.feedback.labels(version or "unknown", FEEDBACK_VOTES[vote]).inc()

    def model_changed(self, result: str, version: str | None) -> None:
        """The client's ModelVersions reports the version it uses ("current") or a switch."""
        if result in SWITCH_RESULTS:
            self.model_switches.labels(result).inc()
        if result != "refused" and version and version.isdigit():
            self.model_version.set(int(version))

    def serve(self, port: int) -> None:
        """Expose /metrics on 0.0.0.0:`port` from a daemon thread."""
        start_http_server(port, registry=self.registry)
