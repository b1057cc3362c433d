"""Realistic synthetic llm_calls rows, generated vectorised, for benchmarks, tests and demos.

Every random draw is the row index hashed with a seed (``pl.int_range(n).hash(seed)``),
so a dataset is deterministic, needs no numpy, and ten million rows take seconds with
no Python loop over rows. :func:`write_store` bulk-loads the rows into a real llmtap
store through Arrow.

The mix: ten models from six providers (one unpriced), five apps plus calls with none,
1000 users (skewed), sessions of eight consecutive calls, a ``team``/``env`` property on
90% of calls, 40% streams, about 3% errors of every kind (a call right after an error
repeats it four times in five: a retry), 2.5% truncated answers, prompt-cache reads on
a third of the calls that can use them (and cache writes on Anthropic), 6% of requests
repeating one of 2000 popular prompts, request bodies of about 300 bytes. Costs are
computed from the listed rates and rounded to 1e-9 USD like the proxy's.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

from collector.storage.database import ensure_schema

#: provider, model, host, path, share of calls, USD per Mtok (input, cache read, cache write, output).
MODELS = [
    ("openai", "gpt-4o-mini", "api.openai.com", "/v1/chat/completions", 0.28, (0.15, 0.075, None, 0.6)),
    ("openai", "gpt-4o", "api.openai.com", "/v1/chat/completions", 0.10, (2.5, 1.25, None, 10.0)),
    ("openai", "o4-mini", "api.openai.com", "/v1/responses", 0.05, (1.1, 0.275, None, 4.4)),
    ("anthropic", "claude-sonnet-4-5", "api.anthropic.com", "/v1/messages", 0.15, (3.0, 0.3, 3.75, 15.0)),
    ("anthropic", "claude-haiku-4-5", "api.anthropic.com", "/v1/messages", 0.10, (1.0, 0.1, 1.25, 5.0)),
    (
        "gemini",
        "gemini-2.5-flash",
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        0.12,
        (0.3, 0.075, None, 2.5),
    ),
    (
        "gemini",
        "gemini-2.5-pro",
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.5-pro:generateContent",
        0.05,
        (1.25, 0.31, None, 10.0),
    ),
    (
        "mistral",
        "mistral-small-latest",
        "api.mistral.ai",
        "/v1/chat/completions",
        0.06,
        (0.1, None, None, 0.3),
    ),
    (
        "groq",
        "llama-3.3-70b-versatile",
        "api.groq.com",
        "/openai/v1/chat/completions",
        0.06,
        (0.59, None, None, 0.79),
    ),
    ("together", "acme-large", "api.together.xyz", "/v1/chat/completions", 0.03, None),
]
STOP = {"openai": "stop", "anthropic": "end_turn", "gemini": "STOP"}
CUT = {"openai": "length", "anthropic": "max_tokens", "gemini": "MAX_TOKENS"}
APPS = [("checkout", 0.35), ("search", 0.25), ("support-bot", 0.2), ("batch-summaries", 0.1), ("eval", 0.05)]
TEAMS = ["core", "growth", "research", "platform"]
#: cumulative share, status, error text: the error mix (about 3% of calls).
ERRORS = [
    (0.012, 429, "Rate limit reached for requests"),
    (0.017, 500, "http 500"),
    (0.021, 529, "overloaded_error: Overloaded"),
    (0.025, 200, "Client disconnected."),
    (0.028, None, "peer closed connection without sending complete message body (incomplete chunked read)"),
    (0.030, 200, "server_error: The server had an error while processing your request"),
]
START = datetime(2026, 1, 1, tzinfo=UTC)
FILLER = "Summarise the following customer conversation and list the open questions. " * 3


def _uniform(seed: int) -> pl.Expr:
    """A uniform draw in [0, 1) per row: the row index hashed with ``seed`` (deterministic)."""
    return (pl.col("i").hash(seed) // 2048).cast(pl.Float64) / 2.0**53


def _normal(seed: int) -> pl.Expr:
    """A standard normal draw per row (Box-Muller over two uniform draws)."""
    return (-2.0 * (1.0 - _uniform(seed)).log()).sqrt() * (2 * math.pi * _uniform(seed + 1)).cos()


def _pick(u: pl.Expr, shares: list[float]) -> pl.Expr:
    """The index of the bucket ``u`` falls in, for buckets of the given shares."""
    cumulative = [sum(shares[: k + 1]) / sum(shares) for k in range(len(shares))]
    cumulative[-1] = 1.0
    return pl.lit(pl.Series(cumulative)).search_sorted(u, side="right").cast(pl.Int64)


def generate(n: int, days: int, start: datetime = START) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``n`` llm_calls rows spread evenly (in start order) over ``days`` days from
    ``start``, and their call_bodies rows."""
    models = pl.DataFrame(
        {
            "model_idx": range(len(MODELS)),
            "provider": [m[0] for m in MODELS],
            "response_model": [m[1] for m in MODELS],
            "host": [m[2] for m in MODELS],
            "path": [m[3] for m in MODELS],
            "r_in": [m[5][0] if m[5] else None for m in MODELS],
            "r_cr": [m[5][1] if m[5] else None for m in MODELS],
            "r_cw": [m[5][2] if m[5] else None for m in MODELS],
            "r_out": [m[5][3] if m[5] else None for m in MODELS],
        },
        schema_overrides={"model_idx": pl.Int64},
    )
    span_us = days * 86_400 * 1_000_000
    base = pl.select(i=pl.int_range(n, dtype=pl.UInt64)).with_columns(
        t_us=(pl.col("i").cast(pl.Float64) * (span_us / n) + _uniform(1) * (span_us / n)).cast(pl.Int64),
        model_idx=_pick(_uniform(2), [m[4] for m in MODELS]),
        app_idx=_pick(_uniform(3), [a[1] for a in APPS] + [0.05]),
        err0=_pick(
            _uniform(4), [ERRORS[0][0]] + [b[0] - a[0] for a, b in itertools.pairwise(ERRORS)] + [0.97]
        ),
        body_key=pl.when(_uniform(5) < 0.06)
        .then((_uniform(6) ** 2 * 2000).cast(pl.Int64) + n)
        .otherwise(pl.col("i").cast(pl.Int64)),
    )
    # A call right after an error repeats it (same model, app and body) four times in five.
    is_error = pl.col("err0") < len(ERRORS)
    retry = is_error.shift(1, fill_value=False) & (_uniform(7) < 0.8)
    base = base.with_columns(
        retry=retry,
        err_idx=pl.when(retry).then(len(ERRORS)).otherwise(pl.col("err0")),
        **{
            c: pl.when(retry).then(pl.col(c).shift(1)).otherwise(pl.col(c))
            for c in ("model_idx", "app_idx", "body_key")
        },
    ).join(models, on="model_idx", how="left")
    errors = pl.DataFrame(
        {
            "err_idx": range(len(ERRORS) + 1),
            "status_code": [e[1] for e in ERRORS] + [200],
            "error": [e[2] for e in ERRORS] + [None],
        },
        schema={"err_idx": pl.Int64, "status_code": pl.Int32, "error": pl.String},
    )
    df = base.join(errors, on="err_idx", how="left")
    http_error = pl.col("status_code").is_null() | (pl.col("status_code") >= 400)
    stream = _uniform(8) < 0.4
    input_tokens = (7.1 + 1.0 * _normal(10)).exp().ceil().cast(pl.Int64)
    output_tokens = (5.5 + 0.9 * _normal(12)).exp().ceil().cast(pl.Int64)
    cached = pl.col("r_cr").is_not_null() & (_uniform(14) < 0.33)
    df = df.with_columns(
        stream=stream,
        input_tokens=pl.when(http_error).then(None).otherwise(input_tokens),
        output_tokens=pl.when(http_error).then(None).otherwise(output_tokens),
        truncated=_uniform(15) < 0.025,
    ).with_columns(
        cache_read_tokens=pl.when(cached)
        .then((pl.col("input_tokens") * (0.3 + 0.6 * _uniform(16))).floor().cast(pl.Int64))
        .otherwise(pl.when(pl.col("input_tokens").is_not_null()).then(0)),
        reasoning_tokens=pl.when(pl.col("response_model").is_in(["o4-mini", "gemini-2.5-pro"])).then(
            (pl.col("output_tokens") * 0.6).floor().cast(pl.Int64)
        ),
    )
    df = df.with_columns(
        cache_write_tokens=pl.when((pl.col("provider") == "anthropic") & (_uniform(17) < 0.15))
        .then(((pl.col("input_tokens") - pl.col("cache_read_tokens")) * 0.5).floor().cast(pl.Int64))
        .otherwise(pl.when(pl.col("input_tokens").is_not_null()).then(0)),
    )
    uncached = pl.col("input_tokens") - pl.col("cache_read_tokens") - pl.col("cache_write_tokens")
    input_cost = (
        uncached * pl.col("r_in")
        + pl.col("cache_read_tokens") * pl.col("r_cr").fill_null(pl.col("r_in"))
        + pl.col("cache_write_tokens") * pl.col("r_cw").fill_null(pl.col("r_in"))
    ) / 1e6
    output_cost = pl.col("output_tokens") * pl.col("r_out") / 1e6
    ttft = (5.9 + 0.5 * _normal(18)).exp()
    tokens_per_s = 40 + 120 * _uniform(20)
    generation = pl.col("output_tokens").fill_null(0) / tokens_per_s * 1000
    money = pl.Decimal(18, 9)
    df = df.with_columns(
        input_cost_usd=input_cost.round(9).cast(money),
        output_cost_usd=output_cost.round(9).cast(money),
        ttft_ms=ttft,
        latency_ms=pl.when(http_error).then(ttft).otherwise(ttft + generation),
    ).with_columns(cost_usd=pl.col("input_cost_usd") + pl.col("output_cost_usd"))
    started = pl.lit(start) + pl.duration(microseconds=pl.col("t_us"))
    reason = (
        pl.when(pl.col("truncated"))
        .then(pl.col("provider").replace_strict(CUT, default="length"))
        .otherwise(pl.col("provider").replace_strict(STOP, default="stop"))
    )
    team = pl.lit(pl.Series(TEAMS)).gather(_pick(_uniform(22), [0.4, 0.3, 0.2, 0.1]))
    env = pl.when(_uniform(23) < 0.8).then(pl.lit("prod")).otherwise(pl.lit("staging"))
    app = pl.lit(pl.Series([a[0] for a in APPS] + [None], dtype=pl.String)).gather(pl.col("app_idx"))
    calls = df.select(
        call_id=pl.format("c{}", pl.col("i")),
        started_at=started,
        ended_at=started + pl.duration(microseconds=(pl.col("latency_ms") * 1000).cast(pl.Int64)),
        provider=pl.col("provider"),
        api=pl.when(pl.col("path").str.contains("responses"))
        .then(pl.lit("responses"))
        .otherwise(pl.lit("chat")),
        method=pl.lit("POST"),
        host=pl.col("host"),
        path=pl.col("path"),
        status_code=pl.col("status_code"),
        stream=pl.col("stream"),
        request_model=pl.col("response_model"),
        response_model=pl.when(pl.col("status_code") == 200).then(pl.col("response_model")),
        input_tokens=pl.col("input_tokens"),
        output_tokens=pl.col("output_tokens"),
        cache_read_tokens=pl.col("cache_read_tokens"),
        cache_write_tokens=pl.col("cache_write_tokens"),
        reasoning_tokens=pl.col("reasoning_tokens"),
        usage_source=pl.when(pl.col("input_tokens").is_null())
        .then(pl.lit("none"))
        .otherwise(pl.lit("provider")),
        latency_ms=pl.col("latency_ms"),
        ttft_ms=pl.col("ttft_ms"),
        cost_usd=pl.col("cost_usd"),
        input_cost_usd=pl.col("input_cost_usd"),
        output_cost_usd=pl.col("output_cost_usd"),
        price_ref=pl.when(pl.col("cost_usd").is_not_null()).then(
            pl.format("bench: {}", pl.col("response_model"))
        ),
        app=app,
        user_id=pl.format("user-{}", (_uniform(24) ** 3 * 1000).cast(pl.Int64)),
        session_id=pl.format("s{}", pl.col("i") // 8),
        properties=pl.when(_uniform(25) < 0.9).then(
            pl.concat_str(pl.lit('{"team":"'), team, pl.lit('","env":"'), env, pl.lit('"}'))
        ),
        error=pl.col("error"),
        finish_reasons=pl.when(http_error)
        .then(pl.lit([], dtype=pl.List(pl.String)))
        .otherwise(pl.concat_list(reason)),
    )
    bodies = df.select(
        call_id=pl.format("c{}", pl.col("i")),
        capture_mode=pl.lit("full"),
        request_body=pl.concat_str(
            pl.lit('{"model":"'),
            pl.col("response_model"),
            pl.lit(f'","max_tokens":1024,"messages":[{{"role":"user","content":"{FILLER} #'),
            pl.col("body_key"),
            pl.lit('"}]}'),
        ),
    )
    return calls, bodies


def write_store(db: Path, calls: pl.DataFrame, bodies: pl.DataFrame) -> None:
    """Bulk-load the generated rows (Arrow, no per-row inserts) into a fresh llmtap store."""
    ensure_schema(db)
    with duckdb.connect(str(db)) as con:
        columns = ", ".join(calls.columns)
        con.register("calls_arrow", calls.to_arrow())
        con.execute(f"INSERT INTO llm_calls ({columns}) SELECT {columns} FROM calls_arrow")
        con.register("bodies_arrow", bodies.to_arrow())
        con.execute(
            "INSERT INTO call_bodies (call_id, capture_mode, request_body) SELECT * FROM bodies_arrow"
        )
        con.execute("CHECKPOINT")


#: Routing in generated stores: incumbent -> (candidate, the rule's id, how often the
#: candidate's answer agrees with the incumbent's). gpt-4o's candidate holds up; sonnet's does not.
ROUTING = {
    "gpt-4o": ("gpt-4o-mini", "gpt-4o-to-gpt-4o-mini", 0.99),
    "claude-sonnet-4-5": ("claude-haiku-4-5", "sonnet-to-haiku", 0.85),
}


def with_routing(calls: pl.DataFrame, shadow_share: float = 0.3, canary_share: float = 0.5) -> pl.DataFrame:
    """``calls`` (from :func:`generate`) as the routing recommender and its rules leave them.

    Successful calls of each :data:`ROUTING` incumbent are shadowed at ``shadow_share``
    (a ``shadow`` row per copy: ``shadow_of`` the original, the candidate's model, an
    exact-match ``agreement`` at the pair's rate, costs at the candidate's rates; one copy
    in ten re-asks the incumbent, to measure the noise floor). From the second half of
    the period on, ``canary_share`` of those calls' sessions are on a canary of the
    rule (rewritten to the candidate, ``routed_from_model`` set), the rest its control.
    """
    rates = {m[1]: m[5] for m in MODELS if m[5]}
    pairs = pl.DataFrame(
        {
            "request_model": list(ROUTING),
            "candidate": [c for c, _, _ in ROUTING.values()],
            "rule": [r for _, r, _ in ROUTING.values()],
            "agree_rate": [a for _, _, a in ROUTING.values()],
            "ratio": [rates[c][0] / rates[m][0] for m, (c, _, _) in ROUTING.items()],
        }
    )
    frame = (
        calls.with_row_index("i")
        .with_columns(pl.col("i").cast(pl.UInt64))
        .join(pairs, on="request_model", how="left")
    )
    money = pl.Decimal(18, 9)
    scaled = {c: (pl.col(c).cast(pl.Float64) * pl.col("ratio")).round(9).cast(money) for c in _COSTS}
    routed = pl.col("candidate").is_not_null()
    late = pl.col("started_at") >= pl.col("started_at").min() + (
        (pl.col("started_at").max() - pl.col("started_at").min()) / 2
    )
    canary = routed & late & ((pl.col("session_id").hash(41) % 1000) < canary_share * 1000)
    production = frame.with_columns(
        routing_rule=pl.when(routed & late).then(pl.col("rule")),
        routing_arm=pl.when(canary).then(pl.lit("canary")).when(routed & late).then(pl.lit("control")),
        routed_from_model=pl.when(canary).then(pl.col("request_model")),
        request_model=pl.when(canary).then(pl.col("candidate")).otherwise(pl.col("request_model")),
        response_model=pl.when(canary & pl.col("response_model").is_not_null())
        .then(pl.col("candidate"))
        .otherwise(pl.col("response_model")),
        **{c: pl.when(canary).then(e).otherwise(pl.col(c)) for c, e in scaled.items()},
    )
    noise = _uniform(42) < 0.1
    shadows = frame.filter(routed & pl.col("error").is_null() & (_uniform(43) < shadow_share)).with_columns(
        call_id=pl.format("shadow-{}", pl.col("call_id")),
        shadow_of=pl.col("call_id"),
        started_at=pl.col("ended_at"),
        ended_at=pl.col("ended_at") + (pl.col("ended_at") - pl.col("started_at")) * 0.7,
        latency_ms=pl.col("latency_ms") * 0.7,
        user_id=pl.lit(None, pl.String),
        session_id=pl.lit(None, pl.String),
        routing_rule=pl.col("rule"),
        routing_arm=pl.when(noise).then(pl.lit("noise_floor")).otherwise(pl.lit("shadow")),
        request_model=pl.when(noise).then(pl.col("request_model")).otherwise(pl.col("candidate")),
        response_model=pl.when(noise).then(pl.col("request_model")).otherwise(pl.col("candidate")),
        comparison=pl.lit("exact"),
        agreement=_uniform(44) < pl.when(noise).then(0.995).otherwise(pl.col("agree_rate")),
        **{c: pl.when(noise).then(pl.col(c)).otherwise(e) for c, e in scaled.items()},
    )
    return pl.concat([production, shadows], how="diagonal").select(
        *calls.columns,
        "routing_rule",
        "routing_arm",
        "routed_from_model",
        "shadow_of",
        "comparison",
        "agreement",
    )


_COSTS = ("cost_usd", "input_cost_usd", "output_cost_usd")


def with_response_cache(calls: pl.DataFrame, bodies: pl.DataFrame, hit_share: float = 0.5) -> pl.DataFrame:
    """``calls`` (from :func:`generate`) as llmtap's response cache would have left them: every
    call looked up (``cache_hit`` false), and ``hit_share`` of the successful repeats of an
    already answered request (same host, path and body, after its first success) served from the
    cache instead: ``cache_hit`` true, ``cache_of`` that first success, cost 0 and
    ``cache_saved_usd`` what the call cost as generated. The rest of the repeats stay paid for,
    as if their entry had expired or been evicted."""
    request = ["host", "path", "request_body"]
    frame = calls.join(bodies.select("call_id", "request_body"), on="call_id", how="left")
    success = pl.col("error").is_null()
    first = pl.col("started_at").filter(success).min().over(request)
    first_id = (
        pl.col("call_id").filter(success).sort_by(pl.col("started_at").filter(success)).first().over(request)
    )
    index = pl.int_range(pl.len(), dtype=pl.UInt64)
    hit = success & (pl.col("started_at") > first) & ((index.hash(51) % 1000) < hit_share * 1000)
    zero = pl.lit(0).cast(pl.Decimal(18, 9))
    return (
        frame.with_columns(_hit=hit.fill_null(False), _first=first_id)
        .with_columns(
            cache_hit=pl.col("_hit"),
            cache_of=pl.when(pl.col("_hit")).then(pl.col("_first")),
            cache_saved_usd=pl.when(pl.col("_hit")).then(pl.col("cost_usd")),
            **{
                c: pl.when(pl.col("_hit") & pl.col(c).is_not_null()).then(zero).otherwise(pl.col(c))
                for c in _COSTS
            },
        )
        .select(*calls.columns, "cache_hit", "cache_of", "cache_saved_usd")
    )
