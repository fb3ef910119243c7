"""Which layers to keep float, split by job: `prepare` (groups, one calibration, variants and
the held-out reference set), `analysis` (per-group sensitivity, QDQ error, time share),
`search` (the accuracy-aware greedy loop over an injected measure) and `report`."""

from kokoro_opt.trials.pin.analysis import GroupSensitivity, analyze
from kokoro_opt.trials.pin.prepare import (
    Prepared,
    build_variant,
    measure_variant,
    prepare,
)
from kokoro_opt.trials.pin.report import write_search_report
from kokoro_opt.trials.pin.search import (
    FREE_SHARE,
    Budget,
    Plan,
    SearchResult,
    Step,
    Variant,
    Walk,
    greedy,
    meets_budget,
    parse_budget,
    search,
)

__all__ = [
    "FREE_SHARE",
    "Budget",
    "GroupSensitivity",
    "Plan",
    "Prepared",
    "SearchResult",
    "Step",
    "Variant",
    "Walk",
    "analyze",
    "build_variant",
    "greedy",
    "measure_variant",
    "meets_budget",
    "parse_budget",
    "prepare",
    "search",
    "write_search_report",
]
