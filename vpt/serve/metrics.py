"""Prometheus text exposition (format 0.0.4) of the server's counters and histograms, without a client
library: a few dicts, rendered on ``GET /metrics``."""
from __future__ import annotations

import threading
from typing import Dict, Sequence, Tuple

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum, self.count = 0.0, 0

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
        self.sum += v
        self.count += 1

    def render(self, name: str) -> str:
        lines = [f'{name}_bucket{{le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        lines += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum}", f"{name}_count {self.count}"]
        return "\n".join(lines)


class Metrics:
    """Requests and errors per task and status, batch sizes, queue time, latency, resident tasks."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Dict[Tuple[str, str, int], int] = {}  # (task, endpoint, status) -> count
        self.latency = Histogram(LATENCY_BUCKETS)
        self.queue = Histogram(LATENCY_BUCKETS)
        self.batch = Histogram(BATCH_BUCKETS)
        self._seen_batches: Dict[str, None] = {}
        self.resident = 0

    def request(self, task: str, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (task, endpoint, int(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency.observe(seconds)

    def batch_seen(self, batch_id: str, size: int, queue_seconds: float) -> None:
        """One answer from the model worker: its queue time; its batch's size once per batch."""
        with self._lock:
            self.queue.observe(max(0.0, queue_seconds))
            if batch_id not in self._seen_batches:
                self._seen_batches[batch_id] = None
                self.batch.observe(size)
                if len(self._seen_batches) > 4096:  # a batch's answers arrive together: keep the recent ids only
                    for k in list(self._seen_batches)[:2048]:
                        del self._seen_batches[k]

    def render(self) -> str:
        with self._lock:
            out = ["# HELP vpt_serve_requests_total Requests answered, by task, endpoint and HTTP status.",
                   "# TYPE vpt_serve_requests_total counter"]
            out += [f'vpt_serve_requests_total{{task="{_esc(t)}",endpoint="{_esc(e)}",status="{s}"}} {n}'
                    for (t, e, s), n in sorted(self.requests.items())]
            out += ["# HELP vpt_serve_errors_total Requests answered with a 4xx or 5xx status, by task and status.",
                    "# TYPE vpt_serve_errors_total counter"]
            errors: Dict[Tuple[str, int], int] = {}
            for (t, _, s), n in self.requests.items():
                if s >= 400:
                    errors[(t, s)] = errors.get((t, s), 0) + n
            out += [f'vpt_serve_errors_total{{task="{_esc(t)}",status="{s}"}} {n}' for (t, s), n in sorted(errors.items())]
            out += ["# HELP vpt_serve_batch_size Requests per model forward batch.", "# TYPE vpt_serve_batch_size histogram",
                    self.batch.render("vpt_serve_batch_size"),
                    "# HELP vpt_serve_queue_seconds Time from a request's arrival to the start of its batch.",
                    "# TYPE vpt_serve_queue_seconds histogram", self.queue.render("vpt_serve_queue_seconds"),
                    "# HELP vpt_serve_request_seconds Time to answer a request (whole HTTP handler).",
                    "# TYPE vpt_serve_request_seconds histogram", self.latency.render("vpt_serve_request_seconds"),
                    "# HELP vpt_serve_tasks_resident Tasks loaded and served.", "# TYPE vpt_serve_tasks_resident gauge",
                    f"vpt_serve_tasks_resident {self.resident}"]
            return "\n".join(out) + "\n"
