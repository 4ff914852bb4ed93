"""Student search: the largest student of the teacher's family that a target runs within budget.

Sits between targets/ (device facts, latency model) and distill/ (which trains the choice):

    from edgekd.search import search_student, SearchResult, print_table
"""

from edgekd.search.show import plot_search, print_table
from edgekd.search.student import (OVERRIDE_KEYS, RAM_FRACTION, SearchResult, candidates, describe,
                                   search_student)

__all__ = ["OVERRIDE_KEYS", "RAM_FRACTION", "SearchResult", "candidates", "describe", "plot_search", "print_table",
           "search_student"]
