"""Check the README's benchmark figures against the benchmarks' newest results.

    python benchmarks/readme_figures.py            # every row with a `python benchmarks/NAME.py ...` command
    python benchmarks/readme_figures.py --readme OTHER.md --results DIR

Each README table row that names a benchmark command (a row whose command is "(same run)" shares the row above's)
is checked against the newest benchmarks/results/*.json written by that exact command (its recorded
arguments, less the paths table.sh passes): every figure in the row's result cells (a number with a decimal point
or a thousands separator, or followed by x, %, s, ms or MB/GB) must appear in what that run printed, at the
README's precision (GB may be printed as MB). Prints one line per row and exits 1 if a figure is not found or a
command has no result here.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMAND = re.compile(r"`python benchmarks/(\w+)\.py([^`]*)`")
UNIT = r"(?:x\b|%|\s?(?:s|ms|MB|GB)\b)"
FIGURE = re.compile(rf"(?<![\w.,])(\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?|\d+\.\d+|\d+(?={UNIT}))"
                    rf"(?=$|[^\w.]|\.(?:\s|$)|{UNIT})")
NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")


def rows(readme: str) -> list[tuple[str, str, list[str]]]:
    """(benchmark name, its argument string, the row's result cells) of every table row naming a command."""
    out, last = [], None
    for line in readme.splitlines():
        if not line.startswith("|") or line.startswith("| ---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[1] == "command":
            continue
        found = COMMAND.search(cells[1])
        if found:
            last = found.group(1), found.group(2).strip()
        elif not cells[1].startswith("(same run)"):
            continue
        if last is not None:
            out.append((*last, cells[2:]))
    return out


def figures(cells: list[str]) -> list[str]:
    """The numbers of result cells that are measured figures (not '4x256', 'top 5', 'fp32', ...)."""
    text = " ".join(COMMAND.sub("", c) for c in cells)
    return FIGURE.findall(text)


def printed_numbers(printed: str) -> list[float]:
    return [float(n.replace(",", "")) for n in NUMBER.findall(printed)]


def found(figure: str, numbers: list[float]) -> bool:
    """`figure` is one of `numbers` rounded to its precision (or one of them in thousands: MB shown as GB)."""
    digits = len(figure.split(".")[1]) if "." in figure else 0
    value = float(figure.replace(",", ""))
    tolerance = 0.5 * 10 ** -digits + 1e-9
    return any(abs(n * scale - value) <= tolerance for n in numbers for scale in (1, 1 / 1000, 1 / 1024))


def without_paths(argv: list[str]) -> list[str]:
    """The arguments less `--model PATH` and `--work PATH` (table.sh passes the run it made; the README omits it)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--model", "--work"):
            skip = True
        else:
            out.append(arg)
    return out


def result_files(results: Path) -> list[dict]:
    """Every result file that records its script, oldest first (by the time in its name), with its path."""
    runs = []
    for path in results.glob("*.json"):
        payload = json.loads(path.read_text(encoding="utf-8"))
        if "script" in payload and "printed" in payload:
            runs.append({**payload, "path": path})
    return sorted(runs, key=lambda run: run["path"].stem.rsplit("-", 2)[-2:])


def newest(runs: list[dict], name: str, args: str) -> dict | None:
    wanted = shlex.split(args)
    return next((run for run in reversed(runs)
                 if run["script"] == name and without_paths(run.get("argv", [])) == wanted), None)


def check(readme: str, results: Path) -> list[str]:
    """One line per row; lines of failing rows start with 'MISSING' or 'NO RESULT'."""
    lines, runs = [], result_files(results)
    for name, args, cells in rows(readme):
        command = f"python benchmarks/{name}.py {args}".strip()
        result = newest(runs, name, args)
        if result is None:
            lines.append(f"NO RESULT  {command}: run it, or fix the command in the README")
            continue
        numbers = printed_numbers(result["printed"])
        shown = figures(cells)
        missing = [f for f in shown if not found(f, numbers)]
        where = f"{result['path'].name} (commit {result.get('commit') or '?'})"
        lines.append(f"MISSING    {command}: {', '.join(missing)} not printed by {where}" if missing else
                     f"ok         {command}: {len(shown)} figures in {where}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", type=Path, default=HERE.parent / "README.md")
    p.add_argument("--results", type=Path, default=HERE / "results")
    a = p.parse_args(argv)
    lines = check(a.readme.read_text(encoding="utf-8"), a.results)
    print("\n".join(lines))
    return 1 if any(not line.startswith("ok") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
