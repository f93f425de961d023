"""A fake Telegram Bot API on 127.0.0.1 for tests: serves queued updates, records every call.

sendMessageDraft answers as the real API does: only to private chats, with a non-zero draft_id.
Sent messages are kept with their inline keyboards; users press their buttons and react to
them: tests/fake_interactions.py.
A switch per method makes its calls fail: `fail_next` the next few, `failing[method]` every one
until removed, with a `Failure` (an HTTP status and description, SERVER_ERROR, NOT_FOUND as for a
method the server lacks, TIMEOUT: held past the bot's read timeout); 429 comes with retry_after,
as Telegram's flood control. Updates are handed out by getUpdates or posted to a webhook once
setWebhook set one, with switches for a server that redelivers, or delivers late and out of
order: tests/fake_updates.py (`tg.updates`).

It runs in threads (http.server), so the bot under test may live in the test's event loop or in
another process. Methods are answered at `/bot<TOKEN>/<method>` as the real API does; a wrong
token gets 401, an unknown method 404.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from tests.fake_interactions import BOT_USER, USER, Interactions
from tests.fake_updates import Updates


@dataclass(frozen=True)
class Failure:
    """How a call fails: the Bot API's error code and description, after `hang` seconds."""

    code: int = 500
    description: str = "Internal Server Error"
    hang: float = 0.0  # seconds the answer is held first: past PTB's read timeout (5 s), a timeout


SERVER_ERROR = Failure()
NOT_FOUND = Failure(404, "Not Found")  # the Bot API's answer to a method it does not have
TIMEOUT = Failure(504, "Gateway Timeout", hang=6.0)


@dataclass
class Call:
    method: str
    params: dict[str, str]  # as sent (form fields; objects JSON-encoded)
    token: str
    ok: bool = False  # answered with success
    at: float = field(default_factory=time.monotonic)  # when the request arrived


class FakeTelegram(Interactions):
    """`with FakeTelegram() as tg:` — point the bot at `tg.url`, push updates, read `tg.calls`."""

    _ids = itertools.count(1)  # message and update ids, unique across the fakes of a run as Telegram's are

    def __init__(self, token: str = "123456:FAKE-token-for-tests"):
        self.token = token
        self.calls: list[Call] = []
        self.updates = Updates()
        self.failing: dict[str, Failure] = {}  # method: how every call of it fails, until removed
        self._chats: dict[int, dict] = {}
        self.sent: dict[tuple[int, int], dict] = {}  # (chat id, message id): a message the bot sent
        self.admins: set[tuple[int, int]] = set()  # (chat id, user id): getChatMember's administrators
        self._queries: dict[str, bool] = {}  # callback query id: answered (Interactions)
        self._failures: dict[str, list[Failure]] = {}
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = False  # server_close() joins the request threads
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-telegram"
        )

    @property
    def url(self) -> str:
        """The Bot API base URL (TELEGRAM_BASE_URL)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeTelegram:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._closing.set()
        self.updates.close()
        self._server.server_close()
        self._thread.join()

    @property
    def queued(self) -> list[dict]:
        """Every update `message`, `press` and `react` made, in order."""
        return self.updates.queued

    # -- what tests do ----------------------------------------------------------------------

    def message(
        self,
        chat_id: int,
        text: str | None = None,
        *,
        chat_type: str = "private",
        reply_to_bot: bool = False,
        user: dict[str, Any] = USER,
        **content: Any,
    ) -> dict[str, Any]:
        """Queue a user's message (text, or content such as sticker=... / photo=...); the update."""
        chat = {"id": chat_id, "type": chat_type}
        if chat_type != "private":
            chat["title"] = "Тестовая группа"
        self._chats[chat_id] = chat
        message = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "chat": chat,
            "from": user,
            **content,
        }
        if text is not None:
            message["text"] = text
            if text.startswith("/"):
                message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        if reply_to_bot:
            message["reply_to_message"] = {
                "message_id": next(self._ids),
                "date": int(time.time()),
                "chat": chat,
                "from": BOT_USER,
                "text": "Моё прошлое сообщение",
            }
        update = {"update_id": next(self._ids), "message": message}
        self.updates.add(update)
        return update

    def deliver(self, update: dict[str, Any]) -> None:
        """Hand out `update` (again) with the next getUpdates (or post it again), even if the bot
        confirmed it: what Telegram does when a confirmation was lost, or what a second replica gets."""
        if "message" in update:
            self._chats[update["message"]["chat"]["id"]] = update["message"]["chat"]
        if "callback_query" in update:
            self._queries.setdefault(update["callback_query"]["id"], False)
        self.updates.deliver(update)

    def fail_next(self, method: str, code: int, description: str, times: int = 1) -> None:
        """Make the next `times` calls of `method` fail with this Bot API error."""
        self._failures.setdefault(method, []).extend([Failure(code, description)] * times)

    def of(self, method: str, chat_id: int | None = None) -> list[dict[str, str]]:
        """The params of every successful call of `method` (to `chat_id`, if given), in order."""
        return [
            c.params
            for c in list(self.calls)
            if c.ok and c.method == method and (chat_id is None or c.params.get("chat_id") == str(chat_id))
        ]

    def tried(self, method: str, chat_id: int | None = None) -> list[Call]:
        """Every call of `method` (to `chat_id`, if given), answered with success or not, in order."""
        return [
            c
            for c in list(self.calls)
            if c.method == method and (chat_id is None or c.params.get("chat_id") == str(chat_id))
        ]

    def message_ids(self, chat_id: int) -> list[int]:
        """The ids of the users' messages to the chat, in order."""
        return [
            u["message"]["message_id"]
            for u in self.queued
            if "message" in u and u["message"]["chat"]["id"] == chat_id
        ]

    def texts(self, chat_id: int) -> list[str]:
        """Texts the bot sent to the chat, in order."""
        return [p["text"] for p in self.of("sendMessage", chat_id)]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 30.0) -> float:
        """Wait until `condition()` holds; the seconds it took. AssertionError on timeout."""
        start = time.monotonic()
        while not condition():
            if time.monotonic() - start > timeout:
                raise AssertionError(
                    f"timed out after {timeout} s; calls: "
                    f"{[(c.method, c.params) for c in self.calls if c.method != 'getUpdates']}"
                )
            await asyncio.sleep(0.02)
        return time.monotonic() - start

    # -- the API ----------------------------------------------------------------------------

    def _draft(self, params: dict[str, str]) -> tuple[int, str] | None:
        """The error the Bot API gives a sendMessageDraft with these params, if any."""
        chat = self._chats.get(int(params["chat_id"]), {"type": "private"})
        if chat["type"] != "private":
            return 400, "Bad Request: message drafts can be sent only to private chats"
        if int(params.get("draft_id") or 0) == 0:
            return 400, "Bad Request: draft_id must be non-zero"
        if len(params.get("text", "").encode("utf-16-le")) // 2 > 4096:
            return 400, "Bad Request: text is too long"
        return None

    def _sent(self, params: dict[str, str]) -> dict:
        chat_id = int(params["chat_id"])
        message = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "from": BOT_USER,
            "chat": self._chats.get(chat_id, {"id": chat_id, "type": "private"}),
            "text": params["text"],
        }
        return self._keep(chat_id, message, params)

    def answer(self, method: str, params: dict[str, str]) -> tuple[int, dict]:
        """The HTTP status and JSON body the Bot API would answer."""
        failure = self._failures[method].pop(0) if self._failures.get(method) else self.failing.get(method)
        if method == "sendMessageDraft" and not failure and (refused := self._draft(params)):
            failure = Failure(*refused)
        if not failure and (refused := self._refused(method, params)):
            failure = Failure(*refused)
        if method == "getUpdates" and not failure and self.updates.webhook:
            failure = Failure(409, "Conflict: can't use getUpdates method while webhook is active")
        if failure:
            self._closing.wait(failure.hang)
            extra = (
                {"parameters": {"retry_after": 1}} if failure.code == 429 else {}
            )  # flood control: wait 1 s
            return failure.code, {
                "ok": False,
                "error_code": failure.code,
                "description": failure.description,
                **extra,
            }
        results: dict[str, Callable[[], Any]] = {
            "getMe": lambda: BOT_USER,
            "getUpdates": lambda: self.updates.get_updates(params),
            "sendMessage": lambda: self._sent(params),
            "sendMessageDraft": lambda: True,
            "sendChatAction": lambda: True,
            "answerCallbackQuery": lambda: True,
            "editMessageReplyMarkup": lambda: self.sent[int(params["chat_id"]), int(params["message_id"])],
            "getChatMember": lambda: self._member(params),
            "setMyCommands": lambda: True,
            "deleteWebhook": lambda: self.updates.delete_webhook() or True,
            "setWebhook": lambda: self.updates.set_webhook(params) or True,
            "getWebhookInfo": lambda: {
                "url": (self.updates.webhook or {}).get("url", ""),
                "has_custom_certificate": False,
                "pending_update_count": 0,
            },
        }
        if method not in results:
            return 404, {"ok": False, "error_code": 404, "description": "Not Found"}
        return 200, {"ok": True, "result": results[method]()}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                params = (
                    json.loads(body)
                    if self.headers.get("Content-Type", "").startswith("application/json")
                    else dict(parse_qsl(body))
                )
                token, _, method = self.path.lstrip("/").partition("/")
                token = token.removeprefix("bot")
                call = Call(method, params, token)
                fake.calls.append(call)
                status, reply = (
                    (401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
                    if token != fake.token
                    else fake.answer(method, params)
                )
                call.ok = reply["ok"]
                data = json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except ConnectionError:  # the bot gave up waiting (a long poll at shutdown)
                    pass

            do_GET = do_POST

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        return Handler
