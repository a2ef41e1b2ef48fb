"""OpenTelemetry for outerloop: one set-up call, and the few helpers the other modules call.

Why it looks like this:

- Instrumented code only talks to the OpenTelemetry *API* (:func:`tracer`, :func:`meter`,
  :func:`span`, the instrument helpers). Until a process calls :func:`setup_telemetry` those
  are OpenTelemetry's no-op objects, so the request path pays next to nothing when telemetry
  is off, and library code never decides where telemetry goes.
- :func:`setup_telemetry` is called once by an entry point (``serve``, ``daemon``, a bench, a
  test). OpenTelemetry's providers are process-wide and can be installed only once; a second
  set-up of the same in-memory kind returns the first one (cleared), anything else is a
  :class:`~outerloop.errors.UsageError` rather than a silent no-op.
- API requests: FastAPI (0.165) traces every request itself once a provider is installed
  (SERVER span ``"GET /v1/users/{user_id}/recommendations"`` with ``http.route``, status,
  the caller's ``traceparent`` continued, and the ``http.server.request.duration`` histogram),
  so outerloop adds no middleware of its own; spans made in a handler are its children.
- Exporters: ``memory`` (tests: the SDK's in-memory span exporter and metric reader),
  ``console`` (stdout), ``otlp`` (``opentelemetry-exporter-otlp-proto-http``, imported only
  when asked for, so the package works without it), ``none`` (spans are still created and
  sampled, nothing leaves the process). Default: ``otlp`` when ``OTEL_EXPORTER_OTLP_ENDPOINT``
  is set, else ``none``; read at call time, never at import.
- One event is followed from ``POST /v1/events`` to the refreshed row by W3C trace context:
  :func:`inject_trace` puts a ``traceparent`` field into the Redis stream entry, the consumer
  links its span to it (:func:`link_from_fields`), remembers it for the user
  (:meth:`TraceLinks.remember`), and the daemon's cycle span links to what the cycle consumed
  (:meth:`TraceLinks.take`). Links, not parents: a consumer batch and a cycle serve many events.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from outerloop.errors import UsageError, UserInputError

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from outerloop.contracts.run_record import RunRecord

ExporterKind = Literal["none", "console", "otlp", "memory"]
EXPORTERS: tuple[str, ...] = ("none", "console", "otlp", "memory")
OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTLP_PIN = "opentelemetry-exporter-otlp-proto-http==1.45.2"
INSTRUMENTATION = "outerloop"
TRACEPARENT_FIELD = "traceparent"
TRACESTATE_FIELD = "tracestate"

# Instrument names (one place, so dashboards and reports agree with the code).
API_DURATION = "http.server.request.duration"  # FastAPI's own (seconds), see the module docstring
AGENT_RUN_DURATION = "outerloop.agent.run.duration"
AGENT_OVERRUN = "outerloop.agent.overrun"
AGENT_RUNS = "outerloop.agent.runs"
AGENT_KILLS = "outerloop.agent.kills"
TOOL_CALL_DURATION = "outerloop.tool.call.duration"
CYCLE_DURATION = "outerloop.daemon.cycle.duration"
DEAD_LETTERS = "outerloop.daemon.dead_letters"
CACHE_LOOKUPS = "outerloop.cache.lookups"

_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(slots=True)
class Telemetry:
    """The SDK providers of this process, and the in-memory exporters when ``exporter="memory"``."""

    service_name: str
    exporter: str
    tracer_provider: "TracerProvider"
    meter_provider: "MeterProvider"
    span_exporter: "InMemorySpanExporter | None" = None
    metric_reader: "InMemoryMetricReader | None" = None
    installed: bool = False
    _closed: bool = field(default=False, repr=False)

    def spans(self) -> list["ReadableSpan"]:
        """Finished spans (in-memory exporter only), oldest first."""
        self._need_memory()
        assert self.span_exporter is not None
        return list(self.span_exporter.get_finished_spans())

    def metric_points(self) -> dict[str, list[Any]]:
        """Collected data points by instrument name (in-memory reader only)."""
        self._need_memory()
        assert self.metric_reader is not None
        data = self.metric_reader.get_metrics_data()
        out: dict[str, list[Any]] = {}
        for rm in getattr(data, "resource_metrics", None) or []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    out.setdefault(m.name, []).extend(m.data.data_points)
        return out

    def clear(self) -> None:
        """Forget finished spans (tests call this between cases)."""
        if self.span_exporter is not None:
            self.span_exporter.clear()

    def force_flush(self, timeout_ms: int = 5000) -> None:
        self.tracer_provider.force_flush(timeout_ms)
        self.meter_provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        """Flush and stop the exporters (idempotent). The providers stay installed: OpenTelemetry
        cannot uninstall them, so spans made afterwards are simply dropped."""
        if not self._closed:
            self._closed = True
            self.tracer_provider.shutdown()
            self.meter_provider.shutdown()

    def _need_memory(self) -> None:
        if self.exporter != "memory":
            raise UsageError(f"telemetry exports to {self.exporter!r}; only exporter='memory' keeps spans in memory")


_installed: Telemetry | None = None  # mirrors OpenTelemetry's own process-wide providers


def default_exporter() -> ExporterKind:
    """``otlp`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (read now), else ``none``."""
    return "otlp" if os.environ.get(OTLP_ENDPOINT_ENV) else "none"


def setup_telemetry(service_name: str, *, exporter: ExporterKind | None = None, install: bool = True) -> Telemetry:
    """Build tracer and meter providers for ``service_name`` and (``install=True``) make them
    the process's providers, so every :func:`span` and instrument reports through them.

    ``install=False`` builds providers without touching the process (use their
    ``get_tracer`` directly). Raises :class:`UsageError` for an unknown exporter, for
    ``otlp`` without its package, and for a second, different set-up in one process.
    """
    global _installed
    kind = exporter or default_exporter()
    if kind not in EXPORTERS:
        raise UsageError(f"unknown telemetry exporter {kind!r}; valid: {', '.join(EXPORTERS)}")
    if install and _installed is not None:
        if _installed.exporter == kind == "memory" and not _installed._closed:
            _installed.clear()
            return _installed
        raise UsageError(f"telemetry is already set up in this process (exporter {_installed.exporter!r}, "
                         f"service {_installed.service_name!r}); OpenTelemetry providers can be installed once")
    tel = _build(service_name, kind)
    if install:
        trace.set_tracer_provider(tel.tracer_provider)
        metrics.set_meter_provider(tel.meter_provider)
        if trace.get_tracer_provider() is not tel.tracer_provider:
            raise UsageError("another OpenTelemetry tracer provider was installed before setup_telemetry "
                             "(e.g. by opentelemetry-instrument); use that one or set-up outerloop's first")
        tel.installed = True
        _installed = tel
    return tel


def _build(service_name: str, kind: str) -> Telemetry:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        InMemoryMetricReader,
        MetricReader,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    resource = Resource.create({"service.name": service_name})
    tp = TracerProvider(resource=resource)
    readers: list[MetricReader] = []
    span_mem: InMemorySpanExporter | None = None
    metric_mem: InMemoryMetricReader | None = None
    if kind == "memory":
        span_mem = InMemorySpanExporter()
        tp.add_span_processor(SimpleSpanProcessor(span_mem))
        metric_mem = InMemoryMetricReader()
        readers.append(metric_mem)
    elif kind == "console":
        # sys.stdout as it is now (the exporters' defaults bind the one of import time)
        tp.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stdout),
                                                     export_interval_millis=60_000))
    elif kind == "otlp":
        span_exp, metric_exp = _otlp_exporters()
        tp.add_span_processor(BatchSpanProcessor(span_exp))
        readers.append(PeriodicExportingMetricReader(metric_exp))
    mp = MeterProvider(resource=resource, metric_readers=readers)
    return Telemetry(service_name, kind, tp, mp, span_mem, metric_mem)


def _otlp_exporters() -> tuple[Any, Any]:
    """OTLP/HTTP exporters; they read ``OTEL_EXPORTER_OTLP_*`` themselves."""
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise UsageError(f"exporter 'otlp' needs {OTLP_PIN} (pip install '{OTLP_PIN}')") from exc
    return OTLPSpanExporter(), OTLPMetricExporter()


# --- entry points (serve, daemon, mcp) -------------------------------------------------------------

CLI_EXPORTERS: tuple[str, ...] = ("none", "console", "otlp")


def add_cli_flag(parser: argparse.ArgumentParser) -> None:
    """``--telemetry {none,console,otlp}``; unset means :func:`default_exporter`, read when the
    command runs (not when the parser is built)."""
    parser.add_argument("--telemetry", choices=CLI_EXPORTERS, default=None,
                        help=f"where traces and metrics go: otlp (to {OTLP_ENDPOINT_ENV}), console (stdout), "
                             f"none; default: otlp when {OTLP_ENDPOINT_ENV} is set, else none")


def setup_for_cli(service_name: str, choice: str | None) -> Telemetry | None:
    """Set up telemetry for a command's ``--telemetry`` choice. ``none`` installs nothing: the
    API's no-op objects cost nothing per request, while an SDK exporting nowhere would still
    build every span. A missing OTLP package is the operator's to fix, so it is a
    :class:`UserInputError` (the CLI prints it without a traceback)."""
    kind = choice or default_exporter()
    if kind == "none":
        return None
    try:
        return setup_telemetry(service_name, exporter=kind)  # type: ignore[arg-type]
    except UsageError as exc:
        raise UserInputError(f"--telemetry {kind}: {exc}") from None


# --- what instrumented code calls ---------------------------------------------------------------


def enabled() -> bool:
    """True once :func:`setup_telemetry` installed providers: lets callers skip work done only for
    telemetry (an extra Redis round trip to fetch trace links, say) when nobody records it."""
    return _installed is not None and not _installed._closed


def tracer() -> trace.Tracer:
    """outerloop's tracer (a no-op until :func:`setup_telemetry`)."""
    return trace.get_tracer(INSTRUMENTATION)


def meter() -> metrics.Meter:
    """outerloop's meter (a no-op until :func:`setup_telemetry`)."""
    return metrics.get_meter(INSTRUMENTATION)


AttrValue = str | bool | int | float | Sequence[str] | Sequence[int] | Sequence[float]


def _clean(attrs: Mapping[str, Any]) -> dict[str, AttrValue]:
    """OpenTelemetry accepts primitives and lists of them; ``None`` is dropped, others stringified."""
    out: dict[str, AttrValue] = {}
    for k, v in attrs.items():
        if v is None:
            continue
        out[k] = v if isinstance(v, (str, bool, int, float, list, tuple)) else str(v)
    return out


@contextmanager
def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL, links: Sequence[Link] = (),
         parent: otel_context.Context | None = None, **attrs: Any) -> Iterator[trace.Span]:
    """A span around a block: a child of the current span (or of ``parent``), with ``attrs``.
    An exception marks it as an error and is re-raised."""
    with tracer().start_as_current_span(name, context=parent, kind=kind, links=list(links),
                                        attributes=_clean(attrs)) as s:
        yield s


@lru_cache(maxsize=None)
def histogram(name: str, unit: str = "ms", description: str = "") -> metrics.Histogram:
    """A histogram instrument (created once per name; safe to call on every use)."""
    return meter().create_histogram(name, unit=unit, description=description)


@lru_cache(maxsize=None)
def counter(name: str, unit: str = "1", description: str = "") -> metrics.Counter:
    """A monotonic counter instrument (created once per name)."""
    return meter().create_counter(name, unit=unit, description=description)


def count_cache(cache: str, hit: bool, n: int = 1) -> None:
    """One cache lookup (encoder, plan, tool, memory...): hit rates are hits / lookups."""
    counter(CACHE_LOOKUPS, description="cache lookups by cache and result").add(
        n, {"cache": cache, "result": "hit" if hit else "miss"})


def count_dead_letter(kind: str) -> None:
    """One stream entry parked as a dead letter. ``kind`` must be low-cardinality (``malformed``,
    ``redelivered``, ``trimmed``): the entry's own message belongs in the dead-letter stream."""
    counter(DEAD_LETTERS, description="stream entries parked as dead letters").add(1, {"kind": kind})


# --- agent runs and tool calls ---------------------------------------------------------------------


@dataclass(slots=True)
class AgentRunObservation:
    """Handed out by :func:`agent_run_span`; call :meth:`finish` with the run's record."""

    span: trace.Span
    agent: str
    record: "RunRecord | None" = None

    def finish(self, record: "RunRecord") -> None:
        self.record = record
        self.span.set_attributes(_clean(run_attributes(record)))
        if record.outcome != "ok":
            self.span.set_status(Status(StatusCode.ERROR, f"{record.outcome}: {record.error or ''}"[:200]))
        record_agent_run(record)


def run_attributes(record: "RunRecord") -> dict[str, Any]:
    """Span attributes of a finished run (the budget, what it took, how it ended)."""
    return {
        "agent": record.agent, "run_id": record.run_id, "budget_ms": float(record.budget_ms),
        "elapsed_ms": round(float(record.elapsed_ms), 3), "outcome": record.outcome,
        "overrun_ms": round(float(record.overrun_ms), 3), "retries": record.retries,
        "tool_calls": record.tool_calls, "llm_tokens": record.llm_tokens, "isolated": record.isolated,
        "writes_committed": record.writes_committed, "stopped": record.stopped,
    }


def record_agent_run(record: "RunRecord") -> None:
    """Metrics of one run: duration by agent and outcome, runs, kills and overrun."""
    attrs = {"agent": record.agent, "outcome": record.outcome}
    histogram(AGENT_RUN_DURATION, description="agent run wall time").record(float(record.elapsed_ms), attrs)
    counter(AGENT_RUNS, description="agent runs by outcome").add(1, attrs)
    if record.outcome == "killed":
        counter(AGENT_KILLS, description="agent runs killed at their deadline").add(1, {"agent": record.agent})
        histogram(AGENT_OVERRUN, description="deadline to stopped, killed runs").record(
            float(record.overrun_ms), {"agent": record.agent})


@contextmanager
def agent_run_span(agent: str, budget_ms: float, **attrs: Any) -> Iterator[AgentRunObservation]:
    """The span of one agent run. Wrap the enforcer's run and call ``obs.finish(record)``; a run
    that raises instead (cancelled with its cycle) leaves ``outcome=error`` on the span."""
    with span("agent.run", agent=agent, budget_ms=float(budget_ms), **attrs) as s:
        obs = AgentRunObservation(s, agent)
        try:
            yield obs
        finally:
            if obs.record is None:  # CancelledError is not an Exception: OTel leaves it unset
                s.set_attribute("outcome", "error")
                s.set_status(Status(StatusCode.ERROR, "run did not finish (cancelled or raised)"))


@contextmanager
def tool_call_span(tool: str, **attrs: Any) -> Iterator[trace.Span]:
    """The span and duration metric of one tool call (``cached`` and the like go in ``attrs``)."""
    t0 = time.perf_counter()
    outcome = "error"
    with span("tool.call", tool=tool, **attrs) as s:
        try:
            yield s
            outcome = "ok"
        finally:
            took = (time.perf_counter() - t0) * 1000.0
            s.set_attribute("elapsed_ms", round(took, 3))
            histogram(TOOL_CALL_DURATION, description="tool call wall time").record(
                took, {"tool": tool, "outcome": outcome})


# --- trace context through Redis --------------------------------------------------------------------


def _text(v: bytes | str) -> str:
    return v.decode("latin-1") if isinstance(v, bytes) else v


def inject_trace(fields: MutableMapping[Any, Any]) -> MutableMapping[Any, Any]:
    """Add ``traceparent`` (and ``tracestate``) of the current span to stream-entry ``fields``.
    Nothing is added without a recording span, so entries stay small when telemetry is off."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    if TRACEPARENT_FIELD in carrier:
        fields[TRACEPARENT_FIELD] = carrier[TRACEPARENT_FIELD]
        if carrier.get(TRACESTATE_FIELD):
            fields[TRACESTATE_FIELD] = carrier[TRACESTATE_FIELD]
    return fields


def context_from_fields(fields: Mapping[Any, Any] | None) -> otel_context.Context | None:
    """The remote span context in an entry's fields (bytes or str keys); None when absent/bad."""
    if not fields:
        return None
    carrier = {_text(k): _text(v) for k, v in fields.items() if _text(k) in (TRACEPARENT_FIELD, TRACESTATE_FIELD)}
    if TRACEPARENT_FIELD not in carrier:
        return None
    ctx = _PROPAGATOR.extract(carrier)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def link_from_traceparent(traceparent: bytes | str, **attrs: Any) -> Link | None:
    """A span link to the span a ``traceparent`` names (None when it does not parse)."""
    ctx = context_from_fields({TRACEPARENT_FIELD: traceparent})
    if ctx is None:
        return None
    return Link(trace.get_current_span(ctx).get_span_context(), _clean(attrs) or None)


def traceparent_of(fields: Mapping[Any, Any] | None) -> str | None:
    """The ``traceparent`` of a stream entry's fields (bytes or str keys), if it has one."""
    for k, v in (fields or {}).items():
        if _text(k) == TRACEPARENT_FIELD:
            return _text(v)
    return None


def link_from_fields(fields: Mapping[Any, Any] | None, **attrs: Any) -> Link | None:
    """A span link to the producer of a stream entry (None when the entry carries no context)."""
    tp = traceparent_of(fields)
    return None if tp is None else link_from_traceparent(tp, **attrs)


@dataclass(frozen=True, slots=True)
class TraceLinks:
    """The ``traceparent``s of events consumed for a user and not yet seen by a cycle, in a
    capped Redis list next to the user's other keys: the consumer remembers them before it
    applies the events (applying may queue the user's cycle at once), the cycle takes them
    (read + delete, one round trip) and links its span to each, once per distinct
    ``traceparent``. ``cap`` keeps a burst from making a span with thousands of links."""

    cap: int = 16
    ttl_s: int = 24 * 3600

    def remember(self, pipe: Any, key: str, traceparents: Sequence[str]) -> None:
        """Queue the writes on ``pipe`` (sync or asyncio redis-py pipeline)."""
        if not traceparents:
            return
        pipe.rpush(key, *traceparents)
        pipe.ltrim(key, -self.cap, -1)
        pipe.expire(key, self.ttl_s)

    async def take(self, client: Any, key: str) -> list[Link]:
        """Links to the remembered spans, emptying the list."""
        pipe = client.pipeline(transaction=True)
        pipe.lrange(key, 0, -1)
        pipe.delete(key)
        raw, _ = await pipe.execute()
        links = [link_from_traceparent(tp, relation="consumed_event") for tp in dict.fromkeys(raw or [])]
        return [ln for ln in links if ln is not None]


__all__ = [
    "AgentRunObservation",
    "Telemetry",
    "TraceLinks",
    "add_cli_flag",
    "agent_run_span",
    "context_from_fields",
    "count_cache",
    "count_dead_letter",
    "enabled",
    "counter",
    "histogram",
    "inject_trace",
    "link_from_fields",
    "link_from_traceparent",
    "meter",
    "record_agent_run",
    "run_attributes",
    "setup_for_cli",
    "setup_telemetry",
    "span",
    "tool_call_span",
    "traceparent_of",
    "tracer",
]
