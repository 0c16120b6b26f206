"""`/metrics` in Prometheus' text format, from the server's counters (prometheus_client).

Beside the usual (requests running and waiting, tokens in and out, time to first token,
prompt tokens served from the prefix cache) it counts what no peer server does: tool calls
that needed repair, call bodies nothing could parse, calls whose arguments their tool's
schema refuses (the grammar keeps this at zero locally), and partial tags held back at a chunk
boundary (text that would have leaked into `content` on a naive streamer).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from agent.server.generation import ServerStats


class _StatsCollector(Collector):
    def __init__(self, stats: ServerStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | SummaryMetricFamily]:
        s = self.stats
        yield GaugeMetricFamily("agent_requests_running", "requests generating now", s.running)
        yield GaugeMetricFamily("agent_requests_waiting", "requests waiting their turn", s.waiting)
        counters = (
            ("agent_requests", "requests completed", s.requests),
            ("agent_prompt_tokens", "prompt tokens read", s.prompt_tokens),
            ("agent_completion_tokens", "tokens generated", s.completion_tokens),
            ("agent_prefix_cache_hit_tokens", "prompt tokens reused from the prefix cache",
             s.cached_tokens),
            ("agent_tool_calls_repaired", "tool calls repaired by the lenient parser",
             s.repaired_calls),
            ("agent_tool_calls_unparsed", "tool call bodies nothing could parse (dropped)",
             s.unparsed_calls),
            ("agent_tool_arguments_refused", "tool calls whose arguments the schema refuses",
             s.refused_arguments),
            ("agent_tag_text_held", "partial tags held back instead of leaking into content",
             s.held_tag_text),
        )  # fmt: skip
        for name, documentation, value in counters:
            yield CounterMetricFamily(name, documentation, value=value)
        yield SummaryMetricFamily(
            "agent_time_to_first_token_seconds",
            "from a request's turn to its first delta",
            count_value=s.first_token.count,
            sum_value=s.first_token.total,
        )


def metrics_text(stats: ServerStats) -> bytes:
    """The exposition text for `stats`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatsCollector(stats))
    return generate_latest(registry)
