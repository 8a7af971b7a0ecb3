"""
Which way the imports point (docs/architecture.md, section 2), checked on the
source: a part that imports upwards fails here, not in a reviewer's memory.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parent.parent / "metadisk"

# A part, and the parts it must never import.
FORBIDDEN = {
    "db": {"web", "store", "chain", "node", "tap", "ledger"},
    "store": {"web", "chain", "node", "tap"},
    "chain": {"web", "node", "tap"},
    "ledger": {"web", "store", "chain", "node", "tap"},
    "meters": {"web", "store", "chain", "node", "tap"},
    "throttle": {"web", "store", "chain", "node", "tap"},
    "metrics": {"web", "store", "chain", "node", "tap", "db"},
    "routes": {"web", "store", "chain", "node", "tap", "db", "config"},
    "periodic": {"web", "store", "chain", "node", "tap", "db"},
    "config": {"web", "store", "chain", "node", "tap", "db"},
    "web": {"node", "tap", "chain"},
}


def part_of(module: str) -> str:
    """C{metadisk.store.cache} is in C{store}; C{metadisk.ledger} is C{ledger}."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.startswith("metadisk.")}


class LayerTests(SynchronousTestCase):
    def test_imports_point_down(self) -> None:
        broken = []
        for path in sorted(PACKAGE.rglob("*.py")):
            module = ".".join(("metadisk", *path.relative_to(PACKAGE).with_suffix("").parts))
            forbidden = FORBIDDEN.get(part_of(module), set())
            for imported in imports(path):
                if part_of(imported) in forbidden:
                    broken.append(f"{module} imports {imported}")
        self.assertEqual(broken, [])

    def test_the_rule_is_seen(self) -> None:
        """The check finds an upward import where there is one (so its silence means something)."""
        self.assertEqual(part_of("metadisk.store.cache"), "store")
        self.assertIn("metadisk.store.cache", imports(PACKAGE / "web" / "upload.py"))
