"""Campaign reports: PNG figures and a one-page HTML summary (``otf report``)."""

from __future__ import annotations

from pathlib import Path

from otf_flows.report import plots
from otf_flows.report.data import CampaignData, collect, performance_table
from otf_flows.report.html import render_html
from otf_flows.validation.model_card import write_model_card

__all__ = ["FIGURES", "CampaignData", "collect", "performance_table", "write_report"]

#: Figure files of a report, in page order.
FIGURES = ("errors_vs_step", "interval_vs_step", "parity", "error_violins", "rdf", "time_split")


def write_report(store, campaign: str, out_dir, calculator=None) -> Path:
    """Write ``index.html`` and the figures of :data:`FIGURES` into ``out_dir``; return the page.

    ``calculator`` replaces the latest model when evaluating it (tests).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = collect(store, campaign, calculator)
    steps = sum(w.step for w in store.walkers(campaign)) or data.campaign.step  # over all walkers
    table = performance_table(data.campaign.wall_seconds, data.time_split, data.n_dft_calls, steps, len(data.models))
    figures = {
        "errors_vs_step": plots.plot_errors_vs_step(data, out / "errors_vs_step.png"),
        "interval_vs_step": plots.plot_interval_vs_step(data, out / "interval_vs_step.png"),
        "parity": plots.plot_parity(data, out / "parity.png"),
        "error_violins": plots.plot_error_violins(data, out / "error_violins.png"),
        "rdf": plots.plot_structure(data, out / "rdf.png"),
        "time_split": plots.plot_time_split(data, table, out / "time_split.png"),
    }
    card = None
    if data.latest_model_id is not None:  # the latest model's card next to the report
        card = write_model_card(store, data.latest_model_id, out / "model_card").relative_to(out).as_posix()
    page = out / "index.html"
    page.write_text(render_html(data, table, figures, model_card=card), encoding="utf-8")
    return page
