"""Server-rendered pages: experiments, an experiment's runs, and the run page ``get_portal_url()`` points at.

The run page mirrors ``ml.azure.com/runs/<run_id>?wsid=...``: status and timings, arguments, inputs,
the driver log (rendered with what exists now, then extended in the browser by ``static/run.js``
polling the API while the run goes), metrics with a chart for series, and the run files as
downloads. Nothing is loaded from the internet, and nothing inline runs (the Content-Security-Policy
of ``security.py`` allows the service's own files only). Every page sets the page session cookie
its script and download links need to read run files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from sandbox.run_definition import RunDefinition
from sandbox.run_folder import DRIVER_LOG
from sandbox.service.api import Services
from sandbox.service.security import set_page_session
from sandbox.service.store import metrics_summary

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
STATIC = Path(__file__).with_name("static")
#: The run page shows the end of a longer driver log (the whole file is a download on the same page).
PAGE_LOG_BYTES = 2 * 1024 * 1024


def _duration(record: Any) -> str:
    if record.started is None:
        return "-"
    end = record.ended or time.time()
    seconds = int(end - record.started)
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def chart(values: list[float], width: int = 480, height: int = 160) -> str:
    """An inline SVG line chart of ``values`` (no external libraries)."""
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) < 2:
        return ""
    low, high = min(numbers), max(numbers)
    span = (high - low) or 1.0
    pad = 24
    points = []
    for index, value in enumerate(numbers):
        x = pad + index * (width - 2 * pad) / (len(numbers) - 1)
        y = height - pad - (value - low) * (height - 2 * pad) / span
        points.append(f"{x:.1f},{y:.1f}")
    return (
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafafa" stroke="#ddd"/>'
        f'<polyline fill="none" stroke="#0078d4" stroke-width="2" points="{" ".join(points)}"/>'
        f'<text x="4" y="14" font-size="11">{high:.4g}</text>'
        f'<text x="4" y="{height - 6}" font-size="11">{low:.4g}</text></svg>'
    )


def add_pages(app: FastAPI, services: Services) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def render(request: Request, template: str, context: dict[str, Any]) -> HTMLResponse:
        response = TEMPLATES.TemplateResponse(request, template, context)
        set_page_session(response, services.token)
        return response

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/experiments")

    @app.get("/experiments", response_class=HTMLResponse, include_in_schema=False)
    def experiments(request: Request) -> HTMLResponse:
        rows = services.store.list_experiments()
        return render(request, "experiments.html", {"experiments": rows})

    @app.get("/experiments/{name}/runs", response_class=HTMLResponse, include_in_schema=False)
    def experiment_runs(request: Request, name: str) -> HTMLResponse:
        runs = services.store.list_runs(name)
        return render(request, "runs.html", {
            "experiment": name, "runs": runs, "duration": _duration})

    @app.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    def run_page(request: Request, run_id: str) -> HTMLResponse:
        record = services.record(run_id)
        # A child run made by its parent's azureml-core has no definition of its own: nothing was submitted.
        definition = RunDefinition.from_dict(record.definition) if record.parent_run_id is None else None
        try:
            log_start, log_size, chunks = services.open_file(run_id, DRIVER_LOG, tail=PAGE_LOG_BYTES)
            driver_log = b"".join(chunks).decode("utf-8", "replace")
        except HTTPException:  # no driver log yet
            log_start, log_size, driver_log = 0, 0, ""
        metrics = metrics_summary(services.store.get_metrics(run_id))
        charts = {name: chart(value) for name, value in metrics.items() if isinstance(value, list)}
        return render(request, "run.html", {
            "run": record,
            "definition": definition,
            "arguments": definition.display_arguments() if definition else [],
            "inputs": definition.input_specs if definition else [],
            "driver_log": driver_log,
            "log_offset": log_size,
            "log_skipped": log_start,
            "metrics": metrics,
            "charts": charts,
            "files": services.files(run_id),
            "duration": _duration(record),
            "terminal": record.status.is_terminal,
            "environment": definition.environment.get("name") if definition else None,
            "fmt": _fmt_time,
        })


def _fmt_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
