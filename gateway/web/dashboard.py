"""The dashboard (``/``): the quarantine by state, mail held per day, the
top symbols, the model in use and the nodes sharing the store."""

from __future__ import annotations

from flask import render_template

from gateway.web import charts, stats
from gateway.web.access import Area, parts

blueprint = Area("dashboard", __name__)


@blueprint.get("/")
def dashboard() -> str:
    found = parts()
    store = found.store
    labels, series = stats.held_per_day(store)
    top = stats.top_symbols(store)
    states = store.count_by_state()
    model = stats.model_in_use(found.config)
    return render_template(
        "dashboard/dashboard.html", states=states, model=model, fleet=stats.fleet(store),
        per_day=charts.stacked_bars("Messages held and kept-rejected per day", labels,
                                    series),
        top_chart=charts.horizontal_bars("Top symbols, last 7 days", top),
        state_chart=charts.horizontal_bars("Quarantine by state", list(states.items())),
        model_chart=charts.horizontal_bars(
            "Model figures (cross-validation mean)",
            [(f["label"], f["mean"] * 100) for f in model.get("figures", [])], unit="%",
            color=charts.COLORS["bar"], digits=2),
        labels=found.console.count_labels(), total=sum(series["quarantine"]) +
        sum(series["reject"]))
