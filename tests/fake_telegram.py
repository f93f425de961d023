"""A fake Telegram Bot API on 127.0.0.1 for tests: serves queued updates, records every call.

sendMessageDraft answers as the real API does: only to private chats, with a non-zero draft_id.
`fail_next` makes calls of a method fail (429 comes with retry_after, as Telegram's flood control).

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

BOT_USER = {
    "id": 4242,
    "is_bot": True,
    "first_name": "Собеседник",
    "username": "dialogue_test_bot",
    "can_join_groups": True,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}
USER = {"id": 1001, "is_bot": False, "first_name": "Аня"}


@dataclass
class Call:
    method: str
    params: dict[str, str]  # as sent (form fields; objects JSON-encoded)
    token: str
    ok: bool = False  # answered with success
    at: float = field(default_factory=time.monotonic)  # when the request arrived


class FakeTelegram:
    """`with FakeTelegram() as tg:` — point the bot at `tg.url`, push updates, read `tg.calls`."""

    _ids = itertools.count(1)  # message and update ids, unique across the fakes of a run as Telegram's are

    def __init__(self, token: str = "123456:FAKE-token-for-tests"):
        self.token = token
        self.calls: list[Call] = []
        self.queued: list[dict] = []  # every update `message` made, in order
        self._updates: list[dict] = []  # those not confirmed yet
        self._again: list[dict] = []  # updates handed out once more whatever the offset (`deliver`)
        self._chats: dict[int, dict] = {}
        self._failures: dict[str, list[tuple[int, str]]] = {}
        self._changed = threading.Condition()
        self._closing = False
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
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._server.server_close()
        self._thread.join()

    # -- what tests do ----------------------------------------------------------------------

    def message(
        self,
        chat_id: int,
        text: str | None = None,
        *,
        chat_type: str = "private",
        reply_to_bot: bool = False,
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
            "from": USER,
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
        with self._changed:
            self.queued.append(update)
            self._updates.append(update)
            self._changed.notify_all()
        return update

    def deliver(self, update: dict[str, Any]) -> None:
        """Hand out `update` (again) with the next getUpdates, even if the bot confirmed it: what
        Telegram does when a confirmation was lost, or what a second replica gets."""
        self._chats[update["message"]["chat"]["id"]] = update["message"]["chat"]
        with self._changed:
            self._again.append(update)
            self._changed.notify_all()

    def fail_next(self, method: str, code: int, description: str, times: int = 1) -> None:
        """Make the next `times` calls of `method` fail with this Bot API error."""
        self._failures.setdefault(method, []).extend([(code, description)] * times)

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
        return [u["message"]["message_id"] for u in self.queued if u["message"]["chat"]["id"] == chat_id]

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

    def _get_updates(self, params: dict[str, str]) -> list[dict]:
        offset = int(params.get("offset", 0))
        deadline = time.monotonic() + min(float(params.get("timeout", 0)), 1.0)
        with self._changed:
            while True:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
                left = deadline - time.monotonic()
                if self._updates or self._again or left <= 0 or self._closing:
                    again, self._again = self._again, []
                    return sorted(again + self._updates, key=lambda u: u["update_id"])[
                        : int(params.get("limit", 100))
                    ]
                self._changed.wait(left)

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
        return {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "from": BOT_USER,
            "chat": self._chats.get(chat_id, {"id": chat_id, "type": "private"}),
            "text": params["text"],
        }

    def answer(self, method: str, params: dict[str, str]) -> tuple[int, dict]:
        """The HTTP status and JSON body the Bot API would answer."""
        failure = self._failures[method].pop(0) if self._failures.get(method) else None
        if method == "sendMessageDraft":
            failure = failure or self._draft(params)
        if failure:
            code, description = failure
            extra = {"parameters": {"retry_after": 1}} if code == 429 else {}  # flood control: wait 1 s
            return code, {"ok": False, "error_code": code, "description": description, **extra}
        results: dict[str, Callable[[], Any]] = {
            "getMe": lambda: BOT_USER,
            "getUpdates": lambda: self._get_updates(params),
            "sendMessage": lambda: self._sent(params),
            "sendMessageDraft": lambda: True,
            "sendChatAction": lambda: True,
            "setMyCommands": lambda: True,
            "deleteWebhook": lambda: True,
            "setWebhook": lambda: True,
            "getWebhookInfo": lambda: {"url": "", "has_custom_certificate": False, "pending_update_count": 0},
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
