"""End to end on the routing bench: shadow evidence, the recommender's decision, its rules
applied by the proxy, and the quality kept on held-out prompts.

Each MMLU subject and GSM8K is an app asking OpenRouter (a local fake answering as the
recorded models did) for gpt-4-1106-preview; mixtral-8x7b-instruct is the candidate. The
even-numbered prompts of each route run first: a few to make the route known, then
``llmtap recommend --write-rules --mode shadow`` drafts shadow rules, then the rest with
every call copied to the candidate and compared. ``llmtap recommend --write-rules --mode
enforce`` then turns what the evidence proves into rules, and the odd-numbered prompts run
under them. Quality is scored with the data's recorded correctness of the model that
actually answered each held-out prompt.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import running_proxy
from tests.proxyproc import ProxyProcess
from tests.routing_bench import GSM8K, STRONG, WEAK, BenchPrompt, load_routes, messages, openrouter
from tests.upstream import FakeUpstream

pytestmark = pytest.mark.timeout(1500)

#: Prompts per route that make the route known before shadow rules exist.
WARM_UP = 4
#: The recommender's settings for the run: the candidate is named, the thresholds are the
#: defaults. (Agreement of at least 0.95 bounds a route's loss at 5 points whatever the
#: answers' correctness.) Decisions at looser thresholds are reported, not applied.
CONFIG = f"""
capture = "metadata"
[recommend]
candidates = {{ "{STRONG}" = ["{WEAK}"] }}
"""
LOOSER = (0.9, 0.85)
RECOMMEND = [sys.executable, "-m", "app.cli", "recommend"]


def _send(proxy: ProxyProcess, prompts: Iterable[BenchPrompt]) -> dict[BenchPrompt, str]:
    """Each prompt through the proxy with the official SDK, 8 at a time: prompt -> the model
    that answered it."""
    tls = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
    client = openai.OpenAI(
        api_key="sk-or-bench-key",
        base_url="https://openrouter.ai/api/v1",
        http_client=httpx.Client(proxy=proxy.url, verify=tls, limits=httpx.Limits(max_connections=8)),
        max_retries=0,
    )

    def one(p: BenchPrompt) -> tuple[BenchPrompt, str]:
        reply = client.chat.completions.create(
            model=STRONG, messages=messages(p), extra_headers={"X-Llmtap-App": p.route}
        )
        return p, reply.model

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(one, prompts))


def _recommend(proxy: ProxyProcess, config: Path, *args: str) -> list[dict]:
    out = subprocess.run(
        [*RECOMMEND, "--data-dir", str(proxy.data_dir), "--config", str(config), "--format", "json", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "NO_COLOR": "1"},
    )
    return json.loads(out.stdout)["recommendations"]


def _is_swap(record: dict, status: str) -> bool:
    return record["kind"] == "model_swap" and record["status"] == status


def _wait_for_shadows(proxy: ProxyProcess, expected: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while True:
        rows = proxy.rows("SELECT count(*) AS n FROM llm_calls WHERE routing_arm = 'shadow'")
        if (rows and rows[0]["n"] >= expected) or time.monotonic() > deadline:
            return rows[0]["n"] if rows else 0
        time.sleep(0.5)


def _outcome(answered: dict[BenchPrompt, str], records: list[dict]) -> dict:
    """Quality and cost of the held-out prompts answered as ``answered`` says, against all of
    them answered by the incumbent; costs per request from the records' cost per 1k."""
    got: dict[str, list[bool]] = defaultdict(list)
    strong: dict[str, list[bool]] = defaultdict(list)
    for p, model in answered.items():
        got[p.route].append(p.correct[model])
        strong[p.route].append(p.correct[STRONG])
    losses = {r: 100 * (sum(strong[r]) - sum(got[r])) / len(got[r]) for r in got}
    per_1k = {
        r["app"]: {STRONG: r["cost_per_1k_incumbent_usd"], WEAK: r["cost_per_1k_candidate_usd"]}
        for r in records
        if r["kind"] == "model_swap" and r["candidate"] == WEAK
    }
    spend = sum(per_1k[p.route][m] for p, m in answered.items()) / 1000
    all_strong = sum(per_1k[p.route][STRONG] for p in answered) / 1000
    return {
        "moved": sorted({p.route for p, m in answered.items() if m == WEAK}),
        "quality_kept": round(sum(map(sum, got.values())) / sum(map(sum, strong.values())), 5),
        "worst_route_loss_points": round(max(losses.values()), 2),
        "routes_losing_over_5_points": sorted(r for r, loss in losses.items() if loss > 5),
        "cost_usd": round(spend, 4),
        "saved_usd": round(all_strong - spend, 4),
        "saved_share": round(1 - spend / all_strong, 4),
    }


def test_recommended_rules_keep_quality_on_held_out_prompts(tmp_path: Path) -> None:
    routes = load_routes()
    first = {r: prompts[0::2] for r, prompts in routes.items()}
    held_out = [p for prompts in routes.values() for p in prompts[1::2]]
    config = tmp_path / "llmtap.toml"
    config.write_text(CONFIG)
    looser = {}
    for threshold in LOOSER:
        looser[threshold] = tmp_path / f"min-agreement-{threshold}.toml"
        looser[threshold].write_text(CONFIG + f"min_agreement = {threshold}\n")

    with FakeUpstream() as upstream:
        upstream.routes["/api/v1/chat/completions"] = openrouter(routes)
        with running_proxy(
            tmp_path / "data",
            upstream,
            upstream_hosts=["openrouter.ai"],
            extra_args=["--config", str(config)],
        ) as proxy:
            # 1. Routes become known; the recommender drafts a shadow rule for each.
            _send(proxy, (p for prompts in first.values() for p in prompts[:WARM_UP]))
            proxy.rows(wait_for=WARM_UP * len(routes))
            drafted = _recommend(proxy, config, "--write-rules", "--mode", "shadow")
            assert {r["app"] for r in drafted if _is_swap(r, "needs_evidence")} == set(routes)
            time.sleep(1.5)  # the proxy re-reads the rules file within a second

            # 2. The rest of the first half runs with every call shadowed by the candidate.
            shadowed = [p for prompts in first.values() for p in prompts[WARM_UP:]]
            _send(proxy, shadowed)
            assert _wait_for_shadows(proxy, len(shadowed)) == len(shadowed)

            # 3. The decision at the defaults becomes enforced rules; looser ones are kept
            #    to see what they would have done.
            decided = _recommend(proxy, config, "--write-rules", "--mode", "enforce")
            loose = {t: _recommend(proxy, path) for t, path in looser.items()}
            time.sleep(1.5)

            # 4. The held-out half under the rules.
            answered = _send(proxy, held_out)
            enforced = proxy.rows(
                "SELECT app, request_model, routed_from_model FROM llm_calls WHERE routing_arm = 'enforce'",
                wait_for=sum(1 for p in held_out if p.route in _recommended(decided)),
            )

    moved = _recommended(decided)
    result = {
        "routes": len(routes),
        "shadow_samples": len(shadowed),
        "held_out_prompts": len(held_out),
        "applied_at_default": _outcome(answered, decided),
        "would_have_been": {
            f"min_agreement={t}": _outcome(
                {p: WEAK if p.route in _recommended(recs) else STRONG for p in held_out}, recs
            )
            for t, recs in loose.items()
        },
    }
    (tmp_path / "routing-bench.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))

    outcome = result["applied_at_default"]
    assert GSM8K not in moved
    assert outcome["quality_kept"] >= 0.99, result
    assert outcome["worst_route_loss_points"] <= 5, result
    # The held-out calls of moved routes, and only those, were answered by the candidate, and
    # the proxy recorded each rewrite.
    assert set(outcome["moved"]) == moved
    assert Counter(row["app"] for row in enforced) == Counter(p.route for p in held_out if p.route in moved)
    assert all(row["routed_from_model"] == STRONG and row["request_model"] == WEAK for row in enforced)


def _recommended(records: list[dict]) -> set[str]:
    return {r["app"] for r in records if _is_swap(r, "recommended")}
