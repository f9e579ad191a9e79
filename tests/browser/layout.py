"""What a person sees of a page's figures, read from the browser: each drawn plotly chart's legend entries (complete
or clipped), the boxes of its plot areas, tick labels and titles, and the colour of each legend entry, so a test can
say that no figure draws over another, no legend hides entries and a role keeps its colour across charts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

Box = tuple[float, float, float, float]
"""``(left, top, right, bottom)`` in page pixels."""

READ_CHARTS = """() => {
    const box = (el) => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
    const colour = (trace) => {
        const filled = trace.fill && trace.fill !== 'none' ? [trace.fillcolor] : [];
        for (const c of [...filled, trace.line && trace.line.color, trace.marker && trace.marker.color]) {
            if (typeof c === 'string') return c;
        }
        return null;
    };
    return [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].map((container) => {
        const plot = container.querySelector('.js-plotly-plot');
        if (!plot || !plot._fullData) return null;
        const legend = plot.querySelector('.legend .bg');
        const ticks = [];
        for (const subplot of plot.querySelectorAll('.cartesianlayer > g.subplot')) {
            const id = [...subplot.classList].find((c) => c !== 'subplot');
            for (const text of subplot.querySelectorAll('.xtick text, .ytick text')) {
                if (text.textContent) ticks.push({subplot: id, text: text.textContent, box: box(text)});
            }
        }
        return {
            title: plot._fullLayout.title && plot._fullLayout.title.text || '',
            container: box(container),
            svg: box(plot.querySelector('.main-svg')),
            legend: legend ? box(legend) : null,
            legendEntries: [...plot.querySelectorAll('.legend .traces')].map((t) => ({
                text: t.textContent, box: box(t)})),
            traces: plot._fullData.filter((t) => t.showlegend && t.visible === true).map((t) => ({
                name: t.name, legendgroup: t.legendgroup || '', colour: colour(t)})),
            areas: [...plot.querySelectorAll('.nsewdrag[data-subplot]')].map((r) => ({
                subplot: r.getAttribute('data-subplot'), box: box(r)})),
            ticks: ticks,
            titles: [...plot.querySelectorAll('.g-gtitle text, .g-xtitle text, .g-ytitle text, .g-x2title text, '
                + '.g-y2title text, .annotation-text')].filter((t) => t.textContent).map((t) => ({
                text: t.textContent, box: box(t)})),
        };
    }).filter((chart) => chart !== null);
}"""


@dataclass(frozen=True)
class Chart:
    """One drawn chart as the browser laid it out."""

    title: str
    container: Box
    svg: Box
    legend: Box | None
    legend_entries: list[tuple[str, Box]]
    traces: list[tuple[str, str | None]]
    areas: list[tuple[str, Box]]
    ticks: list[tuple[str, str, Box]]
    titles: list[tuple[str, Box]]


def charts(page: Page) -> list[Chart]:
    """Every plotly chart drawn on the page, top to bottom."""
    return [
        Chart(
            title=raw["title"],
            container=tuple(raw["container"]),
            svg=tuple(raw["svg"]),
            legend=tuple(raw["legend"]) if raw["legend"] else None,
            legend_entries=[(e["text"], tuple(e["box"])) for e in raw["legendEntries"]],
            traces=[(t["name"], t["colour"]) for t in raw["traces"]],
            areas=[(a["subplot"], tuple(a["box"])) for a in raw["areas"]],
            ticks=[(t["subplot"], t["text"], tuple(t["box"])) for t in raw["ticks"]],
            titles=[(t["text"], tuple(t["box"])) for t in raw["titles"]],
        )
        for raw in page.evaluate(READ_CHARTS)
    ]


def overlap(a: Box, b: Box, slack: float = 1.0) -> bool:
    """Whether two boxes share more than ``slack`` pixels each way."""
    return min(a[2], b[2]) - max(a[0], b[0]) > slack and min(a[3], b[3]) - max(a[1], b[1]) > slack


def inside(inner: Box, outer: Box, slack: float = 1.0) -> bool:
    return (
        inner[0] >= outer[0] - slack
        and inner[1] >= outer[1] - slack
        and inner[2] <= outer[2] + slack
        and inner[3] <= outer[3] + slack
    )


def layout_problems(chart: Chart) -> list[str]:
    """What a person would see wrong with ``chart``: legend entries outside the legend's visible box (clipped, to
    be scrolled to), a tick label over another subplot's plot area, plot areas over each other, an axis title over
    the chart title, and a chart narrower than nine tenths of its box."""
    name = chart.title or "an untitled chart"
    problems = []
    if chart.legend is not None:
        hidden = [text for text, box in chart.legend_entries if not inside(box, chart.legend)]
        if hidden:
            problems.append(f"{name}: {len(hidden)} of {len(chart.legend_entries)} legend entries clipped: {hidden}")
    for index, (subplot, area) in enumerate(chart.areas):
        for other, other_area in chart.areas[index + 1 :]:
            if overlap(area, other_area):
                problems.append(f"{name}: plot areas {subplot} and {other} overlap")
        for tick_subplot, text, box in chart.ticks:
            if tick_subplot != subplot and overlap(box, area):
                problems.append(f"{name}: tick label {text!r} of {tick_subplot} is drawn over {subplot}")
    for index, (text, box) in enumerate(chart.titles):
        for other, other_box in chart.titles[index + 1 :]:
            if overlap(box, other_box):
                problems.append(f"{name}: the titles {text!r} and {other!r} overlap")
    container_width = chart.container[2] - chart.container[0]
    if chart.svg[2] - chart.svg[0] < 0.9 * container_width:
        problems.append(f"{name}: {chart.svg[2] - chart.svg[0]:.0f} px wide in a {container_width:.0f} px box")
    return problems


def colours_by_name(page_charts: list[Chart]) -> dict[str, set[str]]:
    """Every legend entry's name and the colours it is drawn in across the charts."""
    seen: dict[str, set[str]] = {}
    for chart in page_charts:
        for name, colour in chart.traces:
            if colour is not None:
                seen.setdefault(name, set()).add(colour.lower())
    return seen
