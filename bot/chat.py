"""The dialogue core shared by the console and Telegram: history in, one cleaned reply out."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from bot.generate import Generation, generate
from bot.sampling import SamplingConfig
from bot.streaming import OnText, on_tokens
from bot.triton_client import TritonClient
from contract.dialogue import FIRST, build_prompt, clean_reply, fit_turns

log = logging.getLogger(__name__)

FALLBACK_REPLY = "Хм, даже не знаю, что сказать. Расскажи ещё что-нибудь?"


class DialogueTokenizer:
    """tokenizer.json (as export wrote it) with the ids the dialogue needs."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(
                f"no tokenizer at {path}: run `python -m export`, or pass "
                "--tokenizer (BOT_TOKENIZER_DIR) with a folder holding tokenizer.json"
            )
        self.tokenizer = Tokenizer.from_file(str(path))
        self.first_id = self.tokenizer.token_to_id(FIRST)
        if self.first_id is None:
            raise ValueError(f"{path} lacks the {FIRST} token: this is not a ruDialoGPT tokenizer")
        eos = (
            json.loads((folder / "tokenizer_config.json").read_text()).get("eos_token")
            if (folder / "tokenizer_config.json").exists()
            else None
        )
        eos = eos.get("content") if isinstance(eos, dict) else eos
        eos_id = self.tokenizer.token_to_id(eos) if eos else None
        self.stop_ids = tuple(i for i in (self.first_id, eos_id) if i is not None)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def keep_last(self, text: str, n: int) -> str:
        """The last `n` tokens of `text`, as text."""
        return self.decode(self.encode(text)[-n:]).strip()

    def decode(self, ids: list[int]) -> str:
        text: str = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text


@dataclass
class Reply:
    text: str  # what the user sees
    generation: Generation  # token ids and timings
    seconds: float  # wall time of the whole reply
    prompt_tokens: int


class ChatBot:
    """Turns the dialogue so far into the bot's next reply via Triton."""

    def __init__(
        self,
        client: TritonClient,
        tokenizer: DialogueTokenizer,
        sampling: SamplingConfig,
        seed: int | None = None,
    ):
        self.client, self.tokenizer = client, tokenizer
        self.sampling = sampling.with_(stop_ids=tokenizer.stop_ids)
        self.rng = np.random.default_rng(seed)

    async def prompt_ids(self, turns: list[str]) -> list[int]:
        """The prompt for `turns` (oldest first, the user's last), trimmed to fit the model."""
        info = await self.client.model_info()
        budget = info.max_positions - self.sampling.max_new_tokens
        kept = fit_turns(turns, self.tokenizer.count, budget, self.tokenizer.keep_last)
        return self.tokenizer.encode(build_prompt(kept))

    async def reply(self, turns: list[str], on_text: OnText | None = None) -> Reply:
        """The reply to the last turn; an empty one is retried once with sampling, then a fallback.

        `on_text(text)`, if given, gets the visible reply each time it grows while it is generated;
        every such text is the start of the returned reply's text."""
        t0 = time.perf_counter()
        ids = await self.prompt_ids(turns)
        limit = (await self.client.model_info()).max_positions
        stream = (lambda: on_tokens(self.tokenizer.decode, on_text)) if on_text else (lambda: None)
        gen = await generate(
            self.client, ids, self.sampling, self.rng, max_positions=limit, on_tokens=stream()
        )
        text = clean_reply(self.tokenizer.decode(gen.tokens))
        if not text:
            log.info("empty reply: retrying once with sampling")
            gen = await generate(
                self.client,
                ids,
                SamplingConfig(stop_ids=self.sampling.stop_ids, max_new_tokens=self.sampling.max_new_tokens),
                self.rng,
                max_positions=limit,
                on_tokens=stream(),
            )
            text = clean_reply(self.tokenizer.decode(gen.tokens)) or FALLBACK_REPLY
        return Reply(text, gen, time.perf_counter() - t0, len(ids))
