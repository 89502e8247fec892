"""Supply-chain check: known vulnerabilities in the pinned runtime requirements (pip-audit).

Fails when PyPI's advisory data lists a vulnerability in a pinned release, unless its id is in
`.ci/audit-ignore.txt` with a reason (one `ID reason...` per line), so none is left
unexplained. Pins PyPI does not know (releases that come from a local mirror) cannot be
audited: they are counted and named, not silently passed. An unreachable advisory service is a
warning, not a failure, so an offline machine can still run the tests.
Usage: ``python scripts/audit.py [requirements.txt]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORE_FILE = ROOT / ".ci" / "audit-ignore.txt"


def explained() -> dict[str, str]:
    """Vulnerability ids we have looked at, with the reason they do not apply."""
    if not IGNORE_FILE.is_file():
        return {}
    rows = (line.split(None, 1) for line in IGNORE_FILE.read_text().splitlines()
            if line.strip() and not line.startswith("#"))
    return {row[0]: (row[1] if len(row) > 1 else "") for row in rows}


def main() -> int:
    requirements = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "requirements.txt")
    audit = Path(sys.executable).with_name("pip-audit")
    proc = subprocess.run(
        [str(audit), "-r", requirements, "--no-deps", "--disable-pip", "--progress-spinner",
         "off", "-f", "json"], capture_output=True, text=True, timeout=600,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"audit: warning: pip-audit could not run ({last[:160]})")
        return 0
    ignore = explained()
    found, skipped = [], []
    for dep in report.get("dependencies", []):
        if "skip_reason" in dep:
            skipped.append(dep["name"])
            continue
        found += [(dep["name"], dep["version"], v["id"]) for v in dep.get("vulns", [])
                  if v["id"] not in ignore]
    audited = len(report.get("dependencies", [])) - len(skipped)
    for name, version, vid in found:
        print(f"audit: {name}=={version}: {vid} (fix it, or explain it in {IGNORE_FILE.name})")
    print(f"audit: {audited} pinned releases audited, {len(found)} unexplained vulnerabilities, "
          f"{len(ignore)} explained")
    if skipped:
        print(f"audit: not on PyPI, so not auditable here ({len(skipped)}): {', '.join(skipped)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
