"""Recommendations: what fallback chains did, the routing recommender's records with their
evidence (agreement, or scores where answers are scored), what canary rules saved, and
actions that write drafted rules where the proxies read them (the rules file, or the fleet
store's rules when the dashboard reads the fleet) after confirmation."""

import polars as pl
import streamlit as st

import analytics
from app.ui import recommendations_data, widgets
from app.ui.format import count, percent, usd
from app.ui.safe import md, printable, printable_frame
from collector.routing.location import rules_target
from collector.routing.rules import RulesError, dump_rules, read_rules, write_rules

st.title("Recommendations")
view, settings = widgets.page_view()
found = widgets.recommendations(view, settings)
if found.fallbacks.height:
    st.subheader("Fallbacks")
    st.caption(
        "Per [fallbacks] chain: attempts that failed (transport failures: no HTTP answer at all) "
        "and calls a later target answered."
    )
    st.dataframe(printable_frame(found.fallbacks), hide_index=True)
if not found.records:
    st.info(
        "No recommendation for the calls in this time window: the recommender needs calls of a "
        "model it knows a cheaper candidate for (see `llmtap recommend --help`). Widen the window."
    )
    st.stop()

frame = found.frame
recommended = frame.filter(pl.col("status") == "recommended")
cells = st.columns(3)
cells[0].metric("Recommended", count(recommended.height))
cells[1].metric("Needing evidence", count(frame.filter(pl.col("status") == "needs_evidence").height))
cells[2].metric(
    "Monthly savings if all recommended are applied",
    usd(recommended.get_column("monthly_savings_usd_mid").sum()),
    help="mid projection: the cache share and volume observed",
)

st.dataframe(
    printable_frame(
        frame.with_columns(
            pl.Series("quality", [recommendations_data.quality(r) for r in found.records], pl.String)
        ).select(
            "status",
            "kind",
            "app",
            "provider",
            "incumbent",
            "candidate",
            "requests_seen",
            "shadow_samples",
            "agreement",
            "agreement_lower_bound",
            "quality",
            "monthly_savings_usd_low",
            "monthly_savings_usd_mid",
            "monthly_savings_usd_high",
            "reason",
        )
    ),
    hide_index=True,
    column_config={
        "agreement": st.column_config.NumberColumn("agreement", format="percent"),
        "agreement_lower_bound": st.column_config.NumberColumn("agreement (lower bound)", format="percent"),
        "quality": st.column_config.TextColumn(
            "quality (lower bound)",
            help="where answers are scored, the decision rests on this: the score's mean difference, "
            "candidate minus incumbent, in percentage points, and its lower confidence bound",
        ),
        **{
            c: st.column_config.NumberColumn(
                c.removeprefix("monthly_savings_usd_") + " $/month", format="dollar"
            )
            for c in frame.columns
            if c.startswith("monthly_savings")
        },
    },
)

st.subheader("Evidence")
labels = [  # selectbox options are plain text: only control characters need escaping
    printable(
        f"{i + 1}. {r.status}: {r.kind} {r.app or 'any app'} {r.incumbent}"
        + (f" -> {r.candidate}" if r.candidate else "")
    )
    for i, r in enumerate(found.records)
]
chosen = found.records[labels.index(st.selectbox("Record", labels, key="record"))]
record_cells = st.columns(4)
samples = recommendations_data.SCORE_SAMPLES.get(chosen.evidence or "")
if samples is None:  # decided on agreement with the incumbent (or not a swap)
    record_cells[0].metric(
        "Agreement", percent(chosen.agreement), help=f"{count(chosen.shadow_samples)} shadow samples"
    )
    record_cells[1].metric(
        "Agreement lower bound",
        percent(chosen.agreement_lower_bound),
        help=f"at {percent(chosen.confidence)} confidence",
    )
else:  # decided on scores: the one with the lowest lower bound
    record_cells[0].metric(
        "Quality vs incumbent",
        recommendations_data.signed_percent(chosen.quality_difference),
        help=f"mean difference of score {md(chosen.score_name)}, candidate minus incumbent, on "
        f"{count(chosen.score_samples)} {samples} samples",
    )
    record_cells[1].metric(
        "Quality lower bound",
        recommendations_data.signed_percent(chosen.quality_difference_lower_bound),
        help=f"at {percent(chosen.confidence)} confidence",
    )
record_cells[2].metric("Cost per 1k requests", usd(chosen.cost_per_1k_incumbent_usd), help="the incumbent's")
record_cells[3].metric("Candidate cost per 1k", usd(chosen.cost_per_1k_candidate_usd))
st.markdown(md(chosen.reason))  # reasons and risks name models and apps
for risk in chosen.risks:
    st.warning(md(risk))

if found.realised.height:
    st.subheader("What canary rules saved")
    st.dataframe(printable_frame(found.realised), hide_index=True)

st.subheader("Write rules")
target = rules_target(settings, view.store)
path = target.label
action = st.radio(
    "Action",
    recommendations_data.ACTIONS,
    horizontal=True,
    key="rules_action",
    help="draft: only show the rules; shadow: copy calls needing evidence to the candidate; canary: "
    "send a share of callers of recommended swaps to it; enforce: send every such call to it",
)
drafted = analytics.draft_rules(found.records, "shadow" if action == "draft" else action)
if not drafted:
    st.info(
        f"No model swap for {action} here: shadow drafts swaps needing evidence, canary and enforce "
        "recommended ones."
    )
    st.stop()
st.code(printable(dump_rules(drafted)), language="yaml")
if action == "draft":
    st.caption(f"Pick shadow, canary or enforce to write these rules to {md(path)}.")
    st.stop()
try:
    present = {rule.id for rule in read_rules(target)}
except RulesError as exc:
    st.error(f"The rules file cannot be merged into: {md(exc)}")
    st.stop()
replaced = sum(rule.id in present for rule in drafted)
confirmed = st.checkbox(
    f"I reviewed these {len(drafted)} rules: write them to {md(path)} ({replaced} replace rules of the same "
    "id; the proxy applies them on its next call)",
    key="confirm_rules",
)
if st.button("Write rules", disabled=not confirmed, key="write_rules"):
    merged = write_rules(target, drafted, recommendations_data.RULES_HEADER)
    st.success(f"Wrote {len(drafted)} {action} rules to {md(path)}; it now holds {len(merged)} rules.")
