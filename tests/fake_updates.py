"""The fake Bot API's updates (tests/fake_telegram.py): handed out by getUpdates (long polling) or
posted to the bot's webhook once setWebhook set one, as Telegram does; and the ways a server may
misbehave, each a switch:

- `redeliver = n`: every update is handed out n more times, with the next batches, whatever the
  `offset` the bot confirmed (a server that ignores it; with a webhook, posted n more times);
- `late = {chat id: seconds}`: that chat's updates are held back so long (in their own order), so
  they come after later updates of other chats (and after the bot confirmed those);
- `disorder = True`: a batch is handed out chat by chat, the chats in descending id order, each
  chat's updates in order: out of order across chats (PTB confirms the last one's id).

Without a switch it behaves as Telegram: getUpdates hands out what is not confirmed (update id >=
offset) and holds the long poll (at most 1 s here) until there is something; a webhook gets each
update posted until it answers 200 (again after 0.2 s when it does not: not listening yet, an error).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
RETRY_POST = 0.2  # seconds before a webhook post that failed is tried again


def chat_of(update: dict[str, Any]) -> int:
    """The chat of a message, a press of a button under the bot's message, or a reaction."""
    if "callback_query" in update:
        return int(update["callback_query"]["message"]["chat"]["id"])
    return int((update.get("message") or update["message_reaction"])["chat"]["id"])


class Updates:
    """The updates of one fake Bot API (`tg.updates`); its switches are plain attributes."""

    def __init__(self) -> None:
        self.queued: list[dict] = []  # every update made, in order
        self.redeliver = 0
        self.late: dict[int, float] = {}
        self.disorder = False
        self.webhook: dict[str, Any] | None = None  # setWebhook's params while a webhook is set
        self.webhook_target: str | None = None  # where posts go instead of webhook["url"] (a local port)
        self.posts: list[tuple[int, int]] = []  # (update id, HTTP status or 0: no answer) per webhook post
        self._fresh: list[tuple[float, dict]] = []  # (when it is due, update) never handed out
        self._unconfirmed: list[dict] = []  # handed out by getUpdates, not confirmed yet
        self._again: list[dict] = []  # with the next batch, whatever the offset (`deliver`, failed posts)
        self._repeats: dict[int, list[Any]] = {}  # update id: [update, times it comes again]
        self._changed = threading.Condition()
        self._closing = False
        self._pusher: threading.Thread | None = None

    def add(self, update: dict[str, Any]) -> None:
        """A new update, due now or after its chat's `late` delay."""
        with self._changed:
            self.queued.append(update)
            self._fresh.append((time.monotonic() + self.late.get(chat_of(update), 0.0), update))
            self._changed.notify_all()

    def deliver(self, update: dict[str, Any]) -> None:
        """Hand out (or post) `update` once more with the next batch, whatever the offset."""
        with self._changed:
            self._again.append(update)
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if self._pusher:
            self._pusher.join()

    # -- what is handed out ---------------------------------------------------------------------

    def _batch(self, polling: bool) -> list[dict]:
        """What is due now (under the lock): the unconfirmed ones (polling), the new ones, those
        handed out again; each once, in update order or (`disorder`) chat by chat."""
        now = time.monotonic()
        new = [u for due, u in self._fresh if due <= now]
        self._fresh = [(due, u) for due, u in self._fresh if due > now]
        batch = {u["update_id"]: u for u in [*(self._unconfirmed if polling else []), *new, *self._again]}
        self._again = []
        for update_id, entry in list(self._repeats.items()):
            if update_id in batch:  # handed out in this batch anyway: its repeat comes later
                continue
            batch[update_id] = entry[0]
            entry[1] -= 1
            if entry[1] <= 0:
                del self._repeats[update_id]
        if self.redeliver:
            self._repeats.update((u["update_id"], [u, self.redeliver]) for u in new)
        if polling:
            self._unconfirmed += new
        key = (lambda u: (-chat_of(u), u["update_id"])) if self.disorder else (lambda u: u["update_id"])
        return sorted(batch.values(), key=key)

    def _next_due(self) -> float:
        """Seconds until the next held-back update is due (1.0 if none)."""
        return min((due for due, _ in self._fresh), default=time.monotonic() + 1.0) - time.monotonic()

    def get_updates(self, params: dict[str, str]) -> list[dict]:
        """getUpdates: updates past the confirmed `offset`, waiting up to `timeout` (at most 1 s)."""
        offset = int(params.get("offset", 0))
        deadline = time.monotonic() + min(float(params.get("timeout", 0)), 1.0)
        with self._changed:
            self._unconfirmed = [u for u in self._unconfirmed if u["update_id"] >= offset]
            while True:
                batch = self._batch(polling=True)
                left = deadline - time.monotonic()
                if batch or left <= 0 or self._closing:
                    return batch[: int(params.get("limit", 100))]
                self._changed.wait(max(0.01, min(left, self._next_due())))

    # -- the webhook ------------------------------------------------------------------------------

    def set_webhook(self, params: dict[str, Any]) -> None:
        """setWebhook: from now on updates are posted to it, from a thread of their own."""
        with self._changed:
            self.webhook = params
            if self._pusher is None:
                self._pusher = threading.Thread(target=self._push, name="fake-telegram-webhook")
                self._pusher.start()
            self._changed.notify_all()

    def delete_webhook(self) -> None:
        with self._changed:
            self.webhook = None

    def _push(self) -> None:
        while True:
            with self._changed:
                while not self._closing and not (self.webhook and (batch := self._batch(polling=False))):
                    self._changed.wait(max(0.01, min(1.0, self._next_due())))
                if self._closing:
                    return
                hook = dict(self.webhook or {})
            failed = [update for update in batch if not self._post(hook, update)]
            if failed:
                time.sleep(RETRY_POST)
                with self._changed:
                    self._again += failed

    def _post(self, hook: dict[str, Any], update: dict[str, Any]) -> bool:
        """Post one update as Telegram does (the secret in its header); whether it got a 200."""
        request = urllib.request.Request(
            self.webhook_target or hook["url"],
            json.dumps(update).encode(),
            {
                "Content-Type": "application/json",
                "X-Telegram-Bot-Api-Secret-Token": hook.get("secret_token", ""),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:  # not listening (yet, or any more)
            status = 0
        self.posts.append((update["update_id"], status))
        return status == 200
