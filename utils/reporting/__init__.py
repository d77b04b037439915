"""What the scripts report: counts of weights and FLOPs (counting.py), the per-layer tables
(tables.py), and console lines (console.py)."""
