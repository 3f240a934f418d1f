"""Shared test fixtures: paths to the example models and the real-model corpus."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SHARED_MODELS = ROOT.parent / "shared" / "models"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def load_build_models():
    """models/build_models.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("build_models", MODELS / "build_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_models", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def build_models():
    return load_build_models()
