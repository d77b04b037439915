"""Printing the figures every script reports: aligned label/value rows and timings."""


# On a quiet machine the 95th percentile of forward-pass times sits within a few tens of percent
# of the median; several times the median means other work took the cores mid-measurement.
CONTENTION_RATIO = 3.0


def contention_note(stats: dict) -> str:
    """'' or a warning that the spread shows the machine was busy while timing."""
    if stats["median_ms"] > 0 and stats["p95_ms"] > CONTENTION_RATIO * stats["median_ms"]:
        return (f"; contended: p95 is {stats['p95_ms'] / stats['median_ms']:.1f}x the median, the "
                "machine was busy (rerun, or try --threads)")
    return ""


def format_timing(stats: dict) -> str:
    return (f"{stats['median_ms']:.3f} ms median, {stats['mean_ms']:.3f} mean, "
            f"{stats['p95_ms']:.3f} p95, variance {stats['var_ms2']:.4f} ms^2 "
            f"(batch {stats['batch_size']}, {stats['samples']} timed passes after warm-up"
            f"{contention_note(stats)})")


def print_rows(rows, print_fn=print):
    """Aligned 'label: value' lines."""
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print_fn(f"{label:<{width}}  {value}")
