"""Compare experiments: the `exp show` table, `exp diff` and `exp plot`.

`load_rows` reads the baseline (the user's checkout) and every experiment
record; `build_table` picks the columns and sorts; `expfs.report.render`
prints the table in each format. `compare` diffs two experiments and
`expfs.report.plot` draws a metric (it needs matplotlib).
"""

from expfs.report.compare import Comparison, compare
from expfs.report.rows import baseline_row, load_rows
from expfs.report.table import (
    BASELINE_NAME,
    BASELINE_STATUS,
    DEFAULT_PRECISION,
    Column,
    Row,
    Table,
    UnknownColumn,
    build_table,
    find_column,
)

__all__ = [
    "BASELINE_NAME",
    "BASELINE_STATUS",
    "DEFAULT_PRECISION",
    "Column",
    "Comparison",
    "Row",
    "Table",
    "UnknownColumn",
    "baseline_row",
    "build_table",
    "compare",
    "find_column",
    "load_rows",
]
