"""The dialogue core shared by the console and Telegram: history in, one cleaned reply out."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import numpy as np

from client.generate import Generation, VersionChanged
from client.rounds import TritonClient, generate
from client.sampling import SamplingConfig
from client.streaming import OnText, on_tokens
from client.tokenizer import DialogueTokenizer, ModelVersions
from contract.dialogue import build_prompt, clean_reply, fit_turns

log = logging.getLogger(__name__)

FALLBACK = "…"  # what a reply says when the model gave nothing twice (the bot passes its own text)


@dataclass
class Reply:
    text: str  # what the user sees
    generation: Generation  # token ids and timings
    seconds: float  # wall time of the whole reply
    prompt_tokens: int
    version: str | None = None  # the model version that generated it


SWITCHES = 3  # new model versions one reply may meet and start again for


class ChatBot:
    """Turns the dialogue so far into the bot's next reply via Triton."""

    def __init__(
        self,
        client: TritonClient,
        tokenizer: DialogueTokenizer | ModelVersions,
        sampling: SamplingConfig,
        seed: int | None = None,
        stops: bool = True,
        fallback: str = FALLBACK,
    ):
        self.client = client
        self.stops = stops  # a reply ends at the served tokenizer's stop ids (False: only at its length)
        self.versions = tokenizer if isinstance(tokenizer, ModelVersions) else ModelVersions.fixed(tokenizer)
        self.sampling = sampling
        self.fallback = fallback
        self.rng = np.random.default_rng(seed)
        self.checked: str | None = None  # the model version whose tokenizer was checked against ours

    @property
    def tokenizer(self) -> DialogueTokenizer:
        """The tokenizer of the model version now served (as far as this bot knows)."""
        return self.versions.current.tokenizer

    async def check(self, setting: str = "max_new_tokens") -> None:
        """At start: the served version's tokenizer is this bot's (else TokenizerRefused, naming
        the folder that matches), and replies of max_new_tokens leave the model room for a message
        (else a ValueError naming `setting`); TritonError where Triton does not answer."""
        await self._check_tokenizer()
        positions = (await self.client.model_info()).max_positions
        most = positions - self.tokenizer.count(build_prompt(["."]))  # the shortest message's prompt
        if self.sampling.max_new_tokens > most:
            raise ValueError(
                f"{setting} {self.sampling.max_new_tokens} leaves no room for a message: the served model "
                f"holds {positions} positions; use at most {most}"
            )

    async def _check_tokenizer(self) -> None:
        """Ask Triton which tokenizer the version it serves was exported with and make it the one
        in use, or raise TokenizerRefused: at start, and again whenever another version answers."""
        self.versions.check(await self.client.serving())
        self.checked = self.client.version

    async def prompt_ids(self, turns: list[str], tokenizer: DialogueTokenizer | None = None) -> list[int]:
        """The prompt for `turns` (oldest first, the user's last), trimmed to fit the model."""
        tokenizer = tokenizer or self.tokenizer
        info = await self.client.model_info()
        budget = info.max_positions - self.sampling.max_new_tokens
        kept = fit_turns(turns, tokenizer.count, budget, tokenizer.keep_last)
        return tokenizer.encode(build_prompt(kept))

    async def reply(self, turns: list[str], on_text: OnText | None = None) -> Reply:
        """The reply to the last turn; an empty one is retried once with sampling switched on (the
        bot's own settings otherwise), then it is the fallback text.

        `on_text(text)`, if given, gets the visible reply each time it grows while it is generated;
        every such text is the start of the returned reply's text, except where a new model version
        took over mid-reply: the reply then starts again, and so do its texts."""
        t0 = time.perf_counter()
        reply = await self._generate(turns, self.sampling, on_text)
        if not reply.text:
            log.info("empty reply: retrying once with sampling")
            reply = await self._generate(turns, self.sampling.with_(do_sample=True), on_text)
            reply.text = reply.text or self.fallback
        reply.seconds = time.perf_counter() - t0
        return reply

    @functools.cache  # noqa: B019 (a few settings per bot): the same object, so the rounds group them
    def _with_stops(self, sampling: SamplingConfig, tokenizer: DialogueTokenizer) -> SamplingConfig:
        return sampling.with_(stop_ids=tokenizer.stop_ids if self.stops else ())

    async def _generate(self, turns: list[str], sampling: SamplingConfig, on_text: OnText | None) -> Reply:
        """One generation for `turns` with the served version's tokenizer; started again (up to
        SWITCHES times) when another version answers (checked, then followed: client/tokenizer.py)."""
        for switches in range(SWITCHES + 1):
            if self.checked is None or self.checked != self.client.version:
                await self._check_tokenizer()
            served = self.versions.current
            tok = served.tokenizer
            ids = await self.prompt_ids(turns, tok)
            limit = (await self.client.model_info()).max_positions
            try:
                gen = await generate(
                    self.client,
                    ids,
                    self._with_stops(sampling, tok),
                    self.rng,
                    max_positions=limit,
                    on_tokens=on_tokens(tok.decode, on_text) if on_text else None,
                    version=self.checked,
                )
            except VersionChanged:
                if switches == SWITCHES:
                    raise
                continue  # checked again, for the version that answered
            return Reply(clean_reply(tok.decode(gen.tokens)), gen, 0.0, len(ids), self.checked)
        raise AssertionError("unreachable")
