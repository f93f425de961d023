"""A new model in production while 8 chats talk to the bot: export writes a version, Triton (polling)
loads it beside the serving one, the bot follows; a refused version and a failed export change
nothing; a rollback brings the first model back. Real Triton, the real bot on the fake Bot API."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.server_watch import Watch
from bot.metrics import Metrics
from bot.telegram import build_application
from bot.texts import SORRY, UNAVAILABLE
from client.chat import ChatBot, Reply
from client.rounds import TritonClient
from client.sampling import SamplingConfig
from client.streaming import OnText
from client.tokenizer import ModelVersions
from contract import repository as layout
from contract.dialogue import clean_reply
from export import versions
from export.__main__ import main as export_main
from tests.helpers import MODEL, scrape, server_rss_mib, start_triton
from tests.telegram_harness import run_bot, say

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("no_leaked_threads")]
CHATS, TOKENS, POLL_S = 8, 8, 1


def constant_model(checkpoint: Path, out: Path) -> tuple[Path, int]:
    """`checkpoint` changed so that its greedy reply is one token `t` over and over: its last
    layer norm outputs a constant that only token t's (enlarged) embedding points along."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    t = tokenizer.encode(" да")[0]
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    with torch.no_grad():
        wte = model.transformer.wte.weight  # tied with the LM head
        direction = torch.nn.functional.normalize(
            torch.randn(wte.shape[1], generator=torch.manual_seed(0)), dim=0
        )
        wte[t] = direction * 3 * wte.norm(dim=1).max()
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(wte[t])
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, t


@dataclass
class Said:
    started: float
    finished: float
    version: str | None
    text: str


class VersionRecorder(ChatBot):
    """The real ChatBot; records each reply's model version and text with its times."""

    said: list[Said]

    async def reply(self, turns: list[str], on_text: OnText | None = None) -> Reply:
        started = time.monotonic()
        reply = await super().reply(turns, on_text)
        self.said.append(Said(started, time.monotonic(), reply.version, reply.text))
        return reply


def index(url: str) -> dict[str, dict]:
    """Triton's repository index: each version of the model with its state (and reason)."""
    request = urllib.request.Request(f"http://{url}/v2/repository/index", b"{}")
    with urllib.request.urlopen(request, timeout=5) as answer:
        return {e["version"]: e for e in json.loads(answer.read()) if e.get("name") == MODEL}


def hand_made_version(model_dir: Path, source: int) -> int:
    """A copy of version `source` with another checkpoint's tokenizer (it has ids the graph has no
    logits for), staged beside the repository and renamed into place, as an operator copying
    folders by hand would: the model must refuse it."""
    number = max(layout.versions(model_dir)) + 1
    staged = model_dir.parent.parent / f"{layout.STAGING_PREFIX}by-hand"
    shutil.copytree(layout.version_dir(model_dir, source), staged)
    spec_path = staged / layout.TOKENIZER_DIR / "tokenizer.json"
    spec = json.loads(spec_path.read_text())
    extra = {**spec["added_tokens"][-1], "id": len(spec["model"]["vocab"]) + 50, "content": "<x>"}
    spec["added_tokens"].append(extra)
    spec_path.write_text(json.dumps(spec))
    staged.rename(model_dir / str(number))
    return number


def loads(log: Path, version: int) -> int:
    """How often Triton began loading `version` of the model (its log)."""
    return log.read_text(errors="replace").count(f'"loading: {MODEL}:{version}"')


def metric_versions(url: str) -> set[str]:
    """The versions whose model gauges are on Triton's /metrics."""
    families = [f for f in scrape(url) if f.name == "rudialogpt_kv_slots_free"]
    return {sample.labels["version"] for f in families for sample in f.samples}


def test_new_versions_roll_out_under_8_chats_without_a_failed_reply(
    tiny_checkpoint, tmp_path, tg, settings, capsys, monkeypatch
):
    repo = tmp_path / "repo"
    model_dir = repo / MODEL
    constant, t = constant_model(tiny_checkpoint, tmp_path / "constant")
    first = ["--checkpoint", str(tiny_checkpoint), "--repository", str(repo), "--skip-reference"]
    assert export_main(first) == 0
    log = tmp_path / "triton.log"
    server = start_triton(repo, log, poll_seconds=POLL_S)
    publish = versions.publish

    def slowly(*args, **kwargs):  # a real export takes minutes: its staging outlives a few polls
        time.sleep(3 * POLL_S)
        return publish(*args, **kwargs)

    monkeypatch.setattr(versions, "publish", slowly)
    try:
        metrics = Metrics()
        client = TritonClient(server.url, MODEL, timeout=30)
        bot = VersionRecorder(
            client, ModelVersions.open(model_dir), SamplingConfig.greedy(max_new_tokens=TOKENS)
        )
        bot.said = []
        rss_idle = server_rss_mib(server.process.pid)
        figures: dict[str, float] = {}

        async def scenario(dialogues) -> None:
            stop = asyncio.Event()

            async def chat(chat_id: int) -> None:
                m = 0
                while not stop.is_set():
                    await say(tg, chat_id, f"Собеседник {chat_id}, сообщение {m}: как дела?")
                    m += 1

            async def replies(version: str, after: float, each: int = 2) -> None:
                """Until every chat's bot had `each` replies of `version` started after `after`."""
                await tg.wait_for(
                    lambda: sum(s.version == version and s.started > after for s in bot.said) >= CHATS * each,
                    timeout=240,
                )

            chats = [asyncio.create_task(chat(1000 + k)) for k in range(CHATS)]
            watch = Watch(server.process.pid, server.url, server.metrics_url)
            try:
                await replies("1", 0.0, each=1)
                # 1. A new checkpoint exported while they chat: version 2.
                switch_began = time.monotonic()
                args = ["--checkpoint", str(constant), "--repository", str(repo), "--skip-reference"]
                assert await asyncio.to_thread(export_main, args) == 0
                exported = time.monotonic()
                await replies("2", exported)
                figures["peak_rss"] = max(watch.between(switch_began, time.monotonic()))
                first_v2 = min(s.finished for s in bot.said if s.version == "2")
                figures["export_to_first_reply_s"] = first_v2 - exported
                assert all(s.version == "2" for s in bot.said if s.started > first_v2)
                # Each version loaded once: the export's staging never made Triton reload version 1.
                assert (loads(log, 1), loads(log, 2)) == (1, 1)
                # 2. A version whose tokenizer cannot drive the model: Triton refuses it, 2 serves on.
                refused = str(hand_made_version(model_dir, 2))
                await tg.wait_for(
                    lambda: index(server.url).get(refused, {}).get("state") == "UNAVAILABLE", 60
                )
                assert "refused: its tokenizer" in index(server.url)[refused]["reason"]
                await replies("2", time.monotonic(), each=1)
                # 3. An export whose check fails leaves the repository as it was.
                before = sorted(p.name for p in model_dir.iterdir())
                bad = [*first, "--tolerance", "1e-9"]  # its logits differ from PyTorch's by ~1e-6
                capsys.readouterr()
                assert await asyncio.to_thread(export_main, bad) == 2
                assert "the serving graph's logits differ from PyTorch's" in capsys.readouterr().err
                assert sorted(p.name for p in model_dir.iterdir()) == before
                await replies("2", time.monotonic(), each=1)
                # 4. Roll back to version 1: published again as version 4.
                assert (
                    await asyncio.to_thread(export_main, ["--repository", str(repo), "--rollback", "1"]) == 0
                )
                rolled = time.monotonic()
                await replies("4", rolled)
                figures["rollback_to_first_reply_s"] = (
                    min(s.finished for s in bot.said if s.version == "4") - rolled
                )
                assert loads(log, 4) == 1
                # An unloaded version's gauges leave /metrics (its line ends on the dashboard).
                await tg.wait_for(lambda: metric_versions(server.metrics_url) == {"4"}, 30)
            finally:
                stop.set()
                watch.close()
                await asyncio.gather(*chats)

        run_bot(build_application(bot, settings, metrics), scenario)
    finally:
        server.stop()

    # Told apart by their greedy replies: version 2 says token t over and over, 1 and 4 never do.
    constant_reply = clean_reply(bot.tokenizer.decode([t] * TOKENS))
    by_version: dict[str | None, set[str]] = {}
    for s in bot.said:
        by_version.setdefault(s.version, set()).add(s.text)
    assert set(by_version) == {"1", "2", "4"} and by_version["2"] == {constant_reply}
    assert constant_reply not in by_version["1"] | by_version["4"]
    sent = [text for k in range(CHATS) for text in tg.texts(1000 + k)]
    assert UNAVAILABLE not in sent and SORRY not in sent and len(sent) == len(bot.said)
    value = metrics.registry.get_sample_value
    assert value("bot_model_switches_total", {"result": "followed"}) == 2
    assert value("bot_model_switches_total", {"result": "refused"}) == 0 and value("bot_model_version") == 4
    assert sum(value("bot_errors_total", {"kind": k}) for k in ("triton_unavailable", "triton_request")) == 0
    assert layout.versions(model_dir) == [2, 3, 4]  # --keep 3: version 1 pruned (4 is its copy)
    with capsys.disabled():
        print(
            f"\nrollout: {len(bot.said)} replies in {CHATS} chats, 0 failed; export end -> first reply "
            f"of the new version {figures['export_to_first_reply_s']:.2f} s (poll {POLL_S} s), "
            f"rollback {figures['rollback_to_first_reply_s']:.2f} s; Triton RSS {rss_idle:.0f} MiB idle, "
            f"{figures['peak_rss']:.0f} MiB peak during the switch"
        )
