"""Builds edgekd's built-in parallel corpus (English -> German) from the gettext catalogues installed on
this machine (/usr/share/locale/de/LC_MESSAGES/*.mo), once: the result ships in the package, so a fresh
machine needs neither gettext nor these Debian packages.

    python scripts/build_gettext_corpus.py [--lang de] [--out edgekd/data/gettext_en_de]

Writes OUT/pairs.jsonl.gz ({"source", "target", "split", "domain"} per line, sorted, deduplicated) and
OUT/SOURCES.json (each catalogue's Debian package, version and licence from its copyright file);
OUT/README.md is written by hand from SOURCES.json. Cleaning: no header, plural or context-only
entries, no entry whose text is only format directives and punctuation, no untranslated entries,
whitespace collapsed, 2-200 characters, one pair per English message (the first catalogue in sorted
order wins). The held-out split is 3% by a hash of the English text.
"""

from __future__ import annotations

import argparse
import gettext
import gzip
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgekd.io import atomic_path, write_json  # noqa: E402

FORMAT = re.compile(r"%(\d+\$)?[-+ #0']*(\d+|\*)?(\.(\d+|\*))?(hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGaAcspnm%]"
                    r"|\{[^{}]*\}|\$\{?\w+\}?|<[^<>]+>")
VALIDATION_PERCENT = 3


def clean(s: str) -> str:
    return " ".join(s.replace("\\n", " ").split())


def keep(src: str, tgt: str) -> bool:
    """A real sentence or phrase on both sides: not only format directives, markup and punctuation."""
    if not (2 <= len(src) <= 200 and 2 <= len(tgt) <= 240) or src == tgt:
        return False
    bare = FORMAT.sub("", src)
    return sum(c.isalpha() for c in bare) >= 2 and sum(c.isalpha() for c in FORMAT.sub("", tgt)) >= 2


def package_of(path: Path) -> tuple[str, str, str]:
    """(Debian package, version, licence names from its machine-readable copyright file)."""
    try:
        pkg = subprocess.run(["dpkg", "-S", str(path)], capture_output=True, text=True, check=True).stdout.split(":")[0]
    except (OSError, subprocess.CalledProcessError):
        return "unknown", "", "unknown"
    ver = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True).stdout
    copyright = Path("/usr/share/doc") / pkg / "copyright"
    lic = set()
    if copyright.is_file():
        for line in copyright.read_text(errors="replace").splitlines():
            if line.startswith("License:"):
                lic.add(line.split(":", 1)[1].strip())
    return pkg, ver, ", ".join(sorted(l for l in lic if l)) or "see /usr/share/doc/" + pkg + "/copyright"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lang", default="de")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "edgekd/data/gettext_en_de"))
    a = ap.parse_args()
    seen: dict[str, dict] = {}
    sources = []
    for mo in sorted(Path("/usr/share/locale", a.lang, "LC_MESSAGES").glob("*.mo")):
        try:
            with open(mo, "rb") as f:
                cat = gettext.GNUTranslations(f)._catalog
        except (OSError, UnicodeDecodeError) as e:
            print(f"skipped {mo.name}: {type(e).__name__}", file=sys.stderr)
            continue
        n = 0
        for k, v in cat.items():
            if not isinstance(k, str) or not k or not isinstance(v, str):
                continue  # header, plural forms
            src, tgt = clean(k.split("\x04")[-1]), clean(v)
            if keep(src, tgt) and src not in seen:
                seen[src] = {"source": src, "target": tgt, "domain": mo.stem}
                n += 1
        if n:
            pkg, ver, lic = package_of(mo)
            sources.append({"catalogue": mo.name, "package": pkg, "version": ver, "licence": lic, "pairs": n})
    rows = []
    for src in sorted(seen):
        h = int.from_bytes(hashlib.sha256(src.encode()).digest()[:4], "big")
        rows.append(seen[src] | {"split": "validation" if h % 100 < VALIDATION_PERCENT else "train"})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    with atomic_path(out / "pairs.jsonl.gz") as tmp:
        tmp.write_bytes(gzip.compress(body, compresslevel=9, mtime=0))
    write_json(out / "SOURCES.json", {"language_pair": f"en-{a.lang}", "pairs": len(rows),
                                      "validation_percent": VALIDATION_PERCENT, "catalogues": sources})
    for f in ("pairs.jsonl.gz", "SOURCES.json"):
        (out / f).chmod(0o644)  # shipped in the package: readable by everyone
    print(f"{len(rows)} pairs from {len(sources)} catalogues -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
