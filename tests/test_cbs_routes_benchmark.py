"""Smoke test of benchmarks/cbs_routes.py (--quick): every route trains, evaluates and is reported."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "cbs_routes.py"


@pytest.mark.slow
@pytest.mark.xtb
def test_quick_mode_reports_every_route(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("cbs_routes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "cbs_routes", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    text = module.main(["--quick", "--results", str(tmp_path), "--workdir", str(tmp_path / "runs")])
    for route in (*module.ROUTES, "ceiling: MP2 energies + forces", "xTB alone (+ mean offset)"):
        assert f"| {route} |" in text
    assert (tmp_path / "cbs_routes.png").stat().st_size > 0
    assert "nan" not in text.lower()
