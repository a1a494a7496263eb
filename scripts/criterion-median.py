#!/usr/bin/env python3
"""Prints the median time per iteration, in nanoseconds, of one criterion benchmark.

Usage: criterion-median.py <target/criterion dir> <group/bench id as a path>
"""
import json
import sys
from pathlib import Path

path = Path(sys.argv[1]) / sys.argv[2] / "new" / "estimates.json"
try:
    estimates = json.loads(path.read_text())
except (OSError, ValueError) as error:
    print(f"missing ({error.__class__.__name__})")
    sys.exit(0)
print(f"{estimates['median']['point_estimate']:.1f}")
