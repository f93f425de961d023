"""client/generate.py + client/chat.py against the real Triton: parity with transformers, isolation, END;
and, with a scripted client, what an answer from another model version does."""

from __future__ import annotations

import asyncio
import shutil
import time

import numpy as np
import pytest
from tokenizers import Tokenizer

from client.chat import ChatBot
from client.generate import Generation, VersionChanged
from client.rounds import TritonClient, generate
from client.sampling import SamplingConfig
from client.transport import Answer, ModelInfo, SequenceLost, Serving, TritonUnavailable, round_arrays
from contract import triton_io as io
from contract.dialogue import build_prompt
from tests.helpers import Slow, cached_sequences, start_triton

DIALOGUES = [
    ["Привет!"],
    ["Привет! Как дела?", "Хорошо, спасибо. А у тебя?", "Тоже неплохо. Что делаешь?"],
    ["Какая погода?", "Солнечно.", "Пойдём гулять?"],
    ["Что почитать?"],
]


@pytest.fixture(scope="module")
def hf(tiny_checkpoint):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()


def run(coro_fn):
    """Run an async test body with a fresh client, closed afterwards."""

    async def body(url):
        client = TritonClient(url)
        try:
            return await coro_fn(client)
        finally:
            await client.close()

    return body


def hf_greedy(hf, ids, stop_ids, max_new_tokens):
    import torch

    with torch.no_grad():
        out = hf.generate(
            torch.tensor([ids]),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=list(stop_ids),
            pad_token_id=hf.config.pad_token_id,
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        )[0, len(ids) :].tolist()
    return out[:-1] if out and out[-1] in stop_ids else out


@pytest.mark.parametrize("turns", DIALOGUES, ids=lambda t: f"{len(t)}-turns")
def test_greedy_matches_transformers_generate(triton, tokenizer, hf, turns):
    ids = tokenizer.encode(build_prompt(turns))
    cfg = SamplingConfig.greedy(max_new_tokens=24, stop_ids=tokenizer.stop_ids)

    async def body(client):
        return await generate(client, ids, cfg, np.random.default_rng(0))

    gen = asyncio.run(run(body)(triton.url))
    assert gen.tokens == hf_greedy(hf, ids, tokenizer.stop_ids, 24)
    assert gen.tokens or gen.stopped


def test_seeded_sampling_is_reproducible(triton, tokenizer):
    ids = tokenizer.encode(build_prompt(DIALOGUES[1]))
    cfg = SamplingConfig(max_new_tokens=20, stop_ids=tokenizer.stop_ids)

    async def body(client):
        return [(await generate(client, ids, cfg, np.random.default_rng(s))).tokens for s in (5, 5, 6)]

    a, b, c = asyncio.run(run(body)(triton.url))
    assert a == b and len(a) > 0
    assert a != c or len(a) < 3  # another seed may coincide only on a very short reply


def test_concurrent_conversations_equal_alone(triton, tokenizer):
    """16 greedy conversations at once give each exactly what it gives alone."""
    cfg = SamplingConfig.greedy(max_new_tokens=16, stop_ids=tokenizer.stop_ids)
    prompts = [tokenizer.encode(build_prompt([*d, f"Вопрос {k}?"])) for k, d in enumerate(DIALOGUES * 4)]

    async def body(client):
        alone = [(await generate(client, p, cfg, np.random.default_rng(0))).tokens for p in prompts]
        together = await asyncio.gather(
            *(generate(client, p, cfg, np.random.default_rng(0)) for p in prompts)
        )
        return alone, [g.tokens for g in together]

    alone, together = asyncio.run(run(body)(triton.url))
    assert together == alone


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_prompt_equals_the_whole_prompt_and_transformers(triton, tokenizer, hf, chunk):
    """START with the first chunk, continuation steps for the rest: the same greedy reply."""
    ids = tokenizer.encode(build_prompt(DIALOGUES[1] * 3))
    assert len(ids) > 64
    cfg = SamplingConfig.greedy(max_new_tokens=16, stop_ids=tokenizer.stop_ids)

    async def body(client):
        return [
            (await generate(client, ids, cfg, np.random.default_rng(0), prompt_chunk=c)).tokens
            for c in (chunk, None)
        ]

    chunked, whole = asyncio.run(run(body)(triton.url))
    assert chunked == whole == hf_greedy(hf, ids, tokenizer.stop_ids, 16)


def test_prompt_chunk_must_be_positive():
    with pytest.raises(ValueError, match="prompt_chunk"):
        asyncio.run(
            generate(
                TritonClient("127.0.0.1:9"),
                [1, 2],
                SamplingConfig(),
                np.random.default_rng(0),
                prompt_chunk=0,
            )
        )


def test_end_is_sent_also_on_cancellation(triton, tokenizer):
    ids = tokenizer.encode(build_prompt(DIALOGUES[1]))
    cfg = SamplingConfig(max_new_tokens=400, stop_ids=())

    async def body():
        client = Slow(triton.url)
        try:
            task = asyncio.create_task(generate(client, ids, cfg, np.random.default_rng(0)))
            await asyncio.sleep(0.3)
            assert cached_sequences(triton) == 1  # mid-generation: the server holds its cache
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.2)
        finally:
            await client.close()

    asyncio.run(body())
    assert cached_sequences(triton) == 0


def test_generation_stops_at_the_models_context(triton, tokenizer):
    ids = tokenizer.encode(build_prompt(DIALOGUES[1]))
    cfg = SamplingConfig(max_new_tokens=2000, stop_ids=())

    async def body(client):
        info = await client.model_info()
        return info, await generate(
            client, ids, cfg, np.random.default_rng(0), max_positions=info.max_positions
        )

    info, gen = asyncio.run(run(body)(triton.url))
    assert len(ids) + len(gen.tokens) == info.max_positions and not gen.stopped


def test_chat_reply_is_clean_and_trimmed_to_fit(triton, tokenizer):
    """A 10,000-character message is cut to fit the model's positions, and a reply comes back."""

    async def body(client):
        bot = ChatBot(client, tokenizer, SamplingConfig(max_new_tokens=12), seed=0)
        long_reply = await bot.reply(["Привет", "Привет!", "слово " * 2000])
        info = await client.model_info()
        return long_reply, info

    reply, info = asyncio.run(run(body)(triton.url))
    assert reply.prompt_tokens <= info.max_positions - 12
    assert "@@" not in reply.text and reply.text == reply.text.strip() and reply.text


class Disrupted(TritonClient):
    """A client whose sequence is disrupted once, at the 5th step after the first: the connection
    fails (unavailable: the same step is sent again), or the server forgets the sequence (lost:
    it is started again at position 0)."""

    def __init__(self, url, how):
        super().__init__(url)
        self.how, self.steps, self.restarts, self.failed_at = how, 0, 0, None
        self.sent: list[int] = []

    async def send(self, arrays, *args, **kwargs):
        flags = arrays[io.FLAGS][0]
        if flags.size and not flags[0] & io.ROW_END:  # one generation: its row comes first
            sequence, position = int(arrays[io.SEQUENCE_IDS][0, 0]), int(arrays[io.POSITIONS][0, 0])
            if position == 0 and self.steps:
                self.restarts += 1
            if position:
                self.steps += 1
                if self.steps == 5:
                    if self.how == "unavailable":
                        self.failed_at = position
                        raise TritonUnavailable("connection reset (injected)")
                    # the server forgets the sequence: its next step is refused
                    await super().send(round_arrays([(sequence, 0, [], io.ROW_END)]))
            self.sent.append(position)
        return await super().send(arrays, *args, **kwargs)


@pytest.mark.parametrize("chunk", [None, 4], ids=["whole-prompt", "disrupted-mid-prompt"])
@pytest.mark.parametrize("how", ["unavailable", "sequence lost"])
def test_generation_survives_a_disruption_by_restarting_the_sequence(triton, tokenizer, how, chunk):
    ids = tokenizer.encode(build_prompt(DIALOGUES[1]))
    assert len(ids) > 4 * 5  # with chunks of 4, the 5th continuation step is still in the prompt
    cfg = SamplingConfig.greedy(max_new_tokens=12, stop_ids=())

    async def body():
        plain, disrupted = TritonClient(triton.url), Disrupted(triton.url, how)
        try:
            a = await generate(plain, ids, cfg, np.random.default_rng(0))
            b = await generate(disrupted, ids, cfg, np.random.default_rng(0), prompt_chunk=chunk)
            again = disrupted.sent.count(disrupted.failed_at) if disrupted.failed_at else 0
            return a.tokens, b.tokens, disrupted.restarts, again
        finally:
            await plain.close()
            await disrupted.close()

    plain, disrupted, restarts, again = asyncio.run(body())
    assert disrupted == plain and len(plain) == 12
    # lost: the sequence starts again at 0; unavailable: the step that failed is sent again, alone
    assert (restarts, again) == ((1, 0) if how == "sequence lost" else (0, 1))


@pytest.mark.timeout(180)
def test_triton_killed_mid_generation_is_a_typed_error_then_recovers(model_repository, tokenizer, tmp_path):
    """SIGKILL the server during a reply: TritonUnavailable within the timeout; after a restart on
    the same ports the next generation works."""
    server = start_triton(model_repository, tmp_path / "t.log")
    ids = tokenizer.encode(build_prompt(DIALOGUES[1]))
    cfg = SamplingConfig(max_new_tokens=300, stop_ids=())

    async def killed():
        client = Slow(server.url, timeout=2.0, retries=2)
        try:
            task = asyncio.create_task(generate(client, ids, cfg, np.random.default_rng(0)))
            await asyncio.sleep(0.3)
            server.kill()
            t0 = time.monotonic()
            with pytest.raises(TritonUnavailable):
                await task
            return time.monotonic() - t0
        finally:
            await client.close()

    async def normal():
        client = TritonClient(server.url)
        try:
            return await generate(
                client, ids, SamplingConfig.greedy(max_new_tokens=8, stop_ids=()), np.random.default_rng(0)
            )
        finally:
            await client.close()

    try:
        took = asyncio.run(killed())
        assert took < 10  # timeout 2 s, two resumes with backoff, retried START
        server.stop()
        server.start()
        assert len(asyncio.run(normal()).tokens) == 8
    finally:
        server.stop()


# -- model versions: a scripted client, no server ---------------------------------------------------


def answer(token: int, version: str) -> Answer:
    """A round's answer to one row whose best candidate is `token` (greedy picks it), from `version`."""
    ids = np.array([token, *(i for i in range(1000, 1000 + io.CANDIDATES) if i != token)][: io.CANDIDATES])
    logits = np.linspace(10.0, 0.0, io.CANDIDATES, dtype=np.float32)
    ok = np.array([io.ROW_OK], np.int32)
    return Answer(version, ok, [], ids[None].astype(np.int32), logits[None], np.zeros((0, 1), np.float32))


class Scripted(TritonClient):
    """A client whose server is a script: each round of one generation's step is answered by the
    next item of `script` (an Answer, or an exception to raise); records every step as (position,
    ids) and every END row's sequence. The probe says the version of the last answer ("1" at
    first), with the tokenizer digest `digests` gives for it."""

    def __init__(self, script, max_positions: int = 512, digests: dict[str, str] | None = None):
        super().__init__("127.0.0.1:9", timeout=1.0)
        self.script = list(script)
        self.digests = digests or {}
        self.steps: list[tuple[int, list[int]]] = []
        self.ended: list[int] = []
        self._info = self.info = ModelInfo(max_positions, kv_slots=4)

    async def model_info(self):
        return self.info

    async def serving(self):
        self.version = self.version or "1"
        return Serving(self.version, self.digests.get(self.version, ""), "/triton/rudialogpt/1", self.info)

    async def send(self, arrays, *args, **kwargs):
        at, flags = 0, arrays[io.FLAGS][0].tolist()
        for i, n in enumerate(arrays[io.COUNTS][0].tolist()):
            position, ids = int(arrays[io.POSITIONS][0, i]), arrays[io.INPUT_IDS][0, at : at + n].tolist()
            if flags[i] & io.ROW_END:
                self.ended.append(int(arrays[io.SEQUENCE_IDS][0, i]))
            else:
                self.steps.append((position, ids))
            at += n
        if all(f & io.ROW_END for f in flags):
            none = np.zeros((len(flags), 0))
            return Answer("", np.zeros(len(flags), np.int32), [], none, none, none)
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        self.version = item.version
        return item


STOP = 7
PROMPT = [11, 12, 13]


def scripted_generate(client: Scripted, version: str | None):
    cfg = SamplingConfig.greedy(max_new_tokens=10, stop_ids=(STOP,))

    async def body():
        try:
            return await generate(client, PROMPT, cfg, np.random.default_rng(0), version=version)
        finally:
            await client.close()  # the END rows still pending go

    return asyncio.run(body())


@pytest.mark.parametrize("at", [0, 2], ids=["prompt", "mid-reply"])
def test_an_answer_from_another_version_raises_version_changed_at_once(at):
    script = [answer(20 + i, "1") for i in range(at)] + [answer(99, "2"), answer(STOP, "2")]
    client = Scripted(script)
    with pytest.raises(VersionChanged) as changed:
        scripted_generate(client, version="1")
    assert (changed.value.version, changed.value.expected) == ("2", "1")
    assert len(client.steps) == at + 1 and len(client.script) == 1  # no step after the answer
    assert len(client.ended) == 1  # END is still sent


def test_an_error_row_from_another_version_is_not_retried():
    lost = SequenceLost("no cache for this sequence", 400, version="2")
    client = Scripted([answer(20, "1"), lost, answer(21, "2"), answer(STOP, "2")])
    with pytest.raises(VersionChanged) as changed:
        scripted_generate(client, version="1")
    assert changed.value.version == "2" and changed.value.__cause__ is lost
    assert [p for p, _ in client.steps] == [0, 3] and len(client.ended) == 1


@pytest.mark.parametrize(
    "version, error_version",
    [(None, "2"), ("1", "1"), ("1", "")],
    ids=["not-followed", "same-version", "no-answer"],
)
def test_a_lost_sequence_is_started_again_when_the_version_does_not_matter(version, error_version):
    """Without `version` (a fixed tokenizer), or from the same version, or with no version known,
    SequenceLost restarts the sequence over the whole context, as before versions."""
    lost = SequenceLost("no cache for this sequence", 400, version=error_version)
    after = error_version or "1"
    client = Scripted([answer(20, "1"), lost, answer(21, after), answer(STOP, after)])
    gen = scripted_generate(client, version=version)
    assert gen.tokens == [20, 21] and gen.stopped
    assert client.steps == [(0, PROMPT), (3, [20]), (0, [*PROMPT, 20]), (4, [21])]


def test_chat_bot_starts_a_reply_again_with_the_new_versions_tokenizer(tmp_path, model_repository):
    """Version 2 (with a tokenizer that has one more token) answers a reply begun for version 1:
    the bot follows it, encodes the prompt again with version 2's tokenizer and starts again."""
    from client.tokenizer import ModelVersions
    from contract import repository as layout

    word = "приветище"
    model_dir = tmp_path / "rudialogpt"
    real = model_repository / "rudialogpt" / "1" / layout.TOKENIZER_DIR
    shutil.copytree(real, layout.tokenizer_dir(model_dir, 1))
    versions = ModelVersions.open(model_dir)
    old = versions.current.tokenizer
    changed = layout.tokenizer_dir(model_dir, 2)
    shutil.copytree(real, changed)  # version 2 appears after the bot opened the folder
    tok = Tokenizer.from_file(str(changed / "tokenizer.json"))
    tok.add_tokens([word])
    tok.save(str(changed / "tokenizer.json"))
    new_id = tok.token_to_id(word)
    turns = [f"скажи {word}"]

    digests = {"1": old.digest, "2": layout.tokenizer_digest(changed)}  # as each version says
    client = Scripted([answer(new_id, "2"), answer(new_id, "2"), answer(old.first_id, "2")], digests=digests)
    bot = ChatBot(client, versions, SamplingConfig.greedy(max_new_tokens=8), seed=0)
    texts: list[str] = []

    async def body():
        try:
            return await bot.reply(turns, on_text=texts.append)
        finally:
            await client.close()

    reply = asyncio.run(body())

    new = versions.current.tokenizer
    assert versions.current.version == "2" and new is not old
    assert reply.version == "2" and reply.text == word
    first, again = client.steps[0][1], client.steps[1][1]
    assert first == old.encode(build_prompt(turns))  # begun for version 1
    assert again == new.encode(build_prompt(turns)) != first  # started again for version 2
    assert reply.prompt_tokens == len(again) and reply.generation.tokens == [new_id]
    assert texts == [word] and len(client.ended) == 2


def test_a_new_version_whose_tokenizer_is_not_the_bots_is_refused_mid_reply(tmp_path, model_repository):
    """Version 2 answers, but it says it was exported with another tokenizer than the one this bot
    would use for it: the reply fails with TokenizerRefused (naming the fix) and no prompt is sent
    to version 2."""
    from client.tokenizer import ModelVersions, TokenizerRefused
    from contract import repository as layout

    model_dir = tmp_path / "rudialogpt"
    real = model_repository / "rudialogpt" / "1" / layout.TOKENIZER_DIR
    for version in (1, 2):
        shutil.copytree(real, layout.tokenizer_dir(model_dir, version))
    versions = ModelVersions.open(model_dir)
    client = Scripted([answer(20, "2")], digests={"1": layout.tokenizer_digest(real), "2": "0" * 64})
    bot = ChatBot(client, versions, SamplingConfig.greedy(max_new_tokens=8), seed=0)

    async def body():
        try:
            return await bot.reply(["привет"])
        finally:
            await client.close()

    versions.current = versions.follow("1")  # the bot starts on version 1
    with pytest.raises(TokenizerRefused, match=r"--tokenizer \(BOT_TOKENIZER_DIR\)"):
        asyncio.run(body())
    assert len(client.steps) == 1 and "2" in versions.refused


def test_an_empty_reply_is_retried_with_the_bots_own_settings_sampling_switched_on(tokenizer, monkeypatch):
    """The model answers nothing: the retry keeps the bot's settings (greedy's penalties off, its
    top_k, its length) and only switches sampling on; nothing twice gives the bot's fallback text."""
    import client.chat

    used: list[SamplingConfig] = []

    async def nothing(client, ids, cfg, rng, **kwargs):
        used.append(cfg)
        return Generation([], stopped=True)

    monkeypatch.setattr(client.chat, "generate", nothing)
    own = SamplingConfig.greedy(max_new_tokens=9, top_k=5)
    bot = ChatBot(Scripted([], digests={"1": tokenizer.digest}), tokenizer, own, seed=0, fallback="ничего")
    reply = asyncio.run(bot.reply(["привет"]))
    stops = {"stop_ids": tokenizer.stop_ids}
    assert used == [own.with_(**stops), own.with_(do_sample=True, **stops)]
    assert reply.text == "ничего"
