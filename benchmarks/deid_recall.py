"""De-identification recall per Safe Harbor kind, and clinical text wrongly destroyed.

Runs medlora's detector (``medlora.data.PHIDetector``) over ``benchmarks/deid_notes.jsonl``:
fictional notes written the way notes are written, names and places mostly without cue words
("seen with her daughter Maria Gonzalez", "transferred from Fresno"), each with its gold
identifiers by kind and the clinical text that must survive (eponyms such as Parkinson, Graves
and Bell's palsy; vitals; doses). Split ``dev`` was written first and looked at while the
rules were written; split ``heldout`` was written after them (docs/benchmarks.md gives its
first measurement too, and the one rule added after it).

A gold identifier counts as found when detected spans cover every one of its characters (any
kind: a leak is a leak); a kept span counts as destroyed when any of its characters is
redacted; a detected span that touches no gold identifier counts as a false alarm
(over-redaction, not always harmful: a state, a hospital). Every occurrence of a gold string
in its note is gold.

    python benchmarks/deid_recall.py                 # patterns and presidio (when installed)
    python benchmarks/deid_recall.py --smoke         # 4 notes: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).with_name("deid_notes.jsonl")


def occurrences(text: str, values: dict[str, list[str]]) -> list[tuple[str, int, int]]:
    """``(kind, start, end)`` of every whole-word occurrence of each value, less those inside a
    longer one ("Gonzalez" inside "Maria Gonzalez")."""
    found = []
    for kind, strings in values.items():
        for value in strings:
            pattern = rf"(?<!\w){re.escape(value)}(?!\w)"
            found += [(kind, m.start(), m.end()) for m in re.finditer(pattern, text)]
    return [
        (k, s, e)
        for k, s, e in found
        if not any(s2 <= s and e <= e2 and (s2, e2) != (s, e) for _, s2, e2 in found)
    ]


def measure(notes: list[dict[str, Any]], detector: Any) -> dict[str, Any]:
    from medlora.data import find_phi

    gold, found, kept, destroyed = Counter[str](), Counter[str](), Counter[str](), Counter[str]()
    spans = alarms = 0
    start = time.perf_counter()
    for note in notes:
        text = note["text"]
        hidden = set()
        golds = occurrences(text, note["phi"])
        for span in find_phi(text, detector=detector):
            hidden.update(range(span.start, span.end))
            spans += 1
            alarms += not any(span.start < e and s < span.end for _, s, e in golds)
        for kind, s, e in golds:
            gold[kind] += 1
            found[kind] += all(i in hidden or text[i].isspace() for i in range(s, e))
        for kind, s, e in occurrences(text, note["keep"]):
            kept[kind] += 1
            destroyed[kind] += any(i in hidden for i in range(s, e))
    seconds = time.perf_counter() - start
    total = sum(gold.values())
    return {
        "recall": {k: (found[k], gold[k]) for k in sorted(gold)},
        "overall": (sum(found.values()), total),
        "destroyed": {k: (destroyed[k], kept[k]) for k in sorted(kept)},
        "false_alarms": (alarms, spans),
        "seconds": seconds,
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    modes = list(results)
    lines = [
        "| kind | " + " | ".join(f"{m} recall" for m in modes) + " |",
        "|---|" + "---:|" * len(modes),
    ]

    def cell(pair: tuple[int, int]) -> str:
        hit, n = pair
        return f"{hit / n:.2f} ({hit}/{n})" if n else "-"

    kinds = sorted({k for r in results.values() for k in r["recall"]})
    for kind in kinds:
        row = [cell(results[m]["recall"].get(kind, (0, 0))) for m in modes]
        lines.append(f"| {kind} | " + " | ".join(row) + " |")
    lines.append("| **overall** | " + " | ".join(cell(results[m]["overall"]) for m in modes) + " |")
    lines += ["", "| kept text destroyed | " + " | ".join(modes) + " |"]
    lines.append("|---|" + "---:|" * len(modes))
    for kind in sorted({k for r in results.values() for k in r["destroyed"]}):
        row = ["{}/{}".format(*results[m]["destroyed"].get(kind, (0, 0))) for m in modes]
        lines.append(f"| {kind} | " + " | ".join(row) + " |")
    alarms = ["{}/{} spans".format(*results[m]["false_alarms"]) for m in modes]
    lines.append("| false alarms | " + " | ".join(alarms) + " |")
    lines.append("| seconds | " + " | ".join(f"{results[m]['seconds']:.1f}" for m in modes) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--smoke", action="store_true", help="4 notes: checks the script runs")
    parser.add_argument("--split", choices=["dev", "heldout", "all"], default="all")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from medlora.data import PHIDetector

    lines = args.corpus.read_text(encoding="utf-8").splitlines()
    notes = [json.loads(line) for line in lines if line.strip()]
    notes = [n for n in notes if args.split in ("all", n["split"])]
    notes = notes[:4] if args.smoke else notes
    detectors = {"patterns": PHIDetector(engine="patterns")}
    presidio = PHIDetector(engine="auto")
    if presidio.model is not None:
        detectors[f"presidio ({presidio.model})"] = PHIDetector(engine="presidio")
    else:
        print("presidio mode skipped: the phi extra is not installed (pip install 'medlora[phi]')")
    results = {name: measure(notes, d) for name, d in detectors.items()}
    print(f"{len(notes)} notes from {args.corpus.name}, split {args.split}")
    print(table(results))
    for name, r in results.items():
        hit, n = r["overall"]
        names = r["recall"].get("NAME", (0, 0))
        eponyms = r["destroyed"].get("EPONYM", (0, 0))
        print(
            f"{name}: overall recall {hit / n:.3f}, names {names[0] / max(names[1], 1):.3f}, "
            f"eponyms destroyed {eponyms[0]}/{eponyms[1]}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
