"""The pinning search's loop on its own: `greedy` driven by a fake measure, no ONNX Runtime.

Each group adds a fixed amount of log-mel distance when quantized; a step meets the budget when
the sum over quantized groups is at most the limit; speed is the share of time quantized."""

from __future__ import annotations

from kokoro_opt.trials.pin.search import Plan, Step, Variant, greedy

DAMAGE = {"a": 0.30, "b": 0.20, "c": 0.05, "d": 0.01, "e": 0.0}
SHARES = {"a": 0.40, "b": 0.30, "c": 0.20, "d": 0.001, "e": 0.002}


def _measure(limit: float, seen: list[Variant]):
    def measure(variant: Variant) -> Step:
        seen.append(variant)
        quantized = [g for g in DAMAGE if g not in variant.pinned]
        logmel = sum(DAMAGE[g] for g in quantized)
        return Step(
            name=variant.name,
            action=variant.action,
            pinned=variant.pinned,
            logmel=logmel,
            wer=None,
            speedup=1.0 + sum(SHARES[g] for g in quantized),
            meets=logmel <= limit + 1e-12,
        )

    return measure


def test_greedy_pins_free_groups_then_by_order_then_unpins() -> None:
    seen: list[Variant] = []
    plan = Plan(order=["a", "b", "c", "d", "e"], shares=SHARES, free_share=0.005)
    walk = greedy(plan, _measure(0.26, seen))
    assert [v.name for v in seen] == [f"s{i:02d}" for i in range(len(seen))]
    assert seen[0].pinned == [] and seen[0].action == "quantize every group"
    assert seen[1].pinned == ["d", "e"] and seen[1].action.startswith("pin 2 groups")
    assert seen[2].pinned == ["d", "e", "a"] and seen[2].action == "pin a"
    # a pinned: 0.26 meets; un-pin tries the costly pinned group (a) and keeps it pinned
    assert seen[3].action == "un-pin a" and not walk.steps[3].meets
    assert walk.chosen is walk.steps[2] and walk.free == ["d", "e"] and walk.skipped == []


def test_unpin_skips_groups_that_alone_break_the_budget() -> None:
    seen: list[Variant] = []
    plan = Plan(
        order=["a", "b", "c", "d", "e"],
        shares=SHARES,
        free_share=0.0,
        alone=DAMAGE,
        max_logmel=0.26,
    )
    walk = greedy(plan, _measure(0.26, seen))
    assert [v.pinned for v in seen] == [[], ["a"]]
    assert walk.skipped == ["a"] and walk.chosen is not None and walk.chosen.pinned == ["a"]


def test_greedy_stops_at_max_steps_without_a_choice() -> None:
    seen: list[Variant] = []
    walk = greedy(Plan(order=list(DAMAGE), shares=SHARES, max_steps=2), _measure(-1.0, seen))
    assert len(walk.steps) == 2 and walk.chosen is None


def test_greedy_stops_at_once_when_everything_quantized_meets() -> None:
    seen: list[Variant] = []
    walk = greedy(Plan(order=list(DAMAGE), shares=SHARES), _measure(10.0, seen))
    assert [v.pinned for v in seen] == [[]] and walk.chosen is walk.steps[0]
