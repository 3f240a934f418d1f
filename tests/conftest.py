"""Shared test fixtures: paths to the example models and the real-model corpus, the two test tiers,
and the real models converted and proved once per mode.

Two tiers. The plan tier (every test not marked ``e2e``) checks what the converter plans and
builds: matches, reason codes, kernels on small arrays, ``inspect`` and ``convert(..., verify=False)``.
It never runs ONNX Runtime or a second process: here ``onnxruntime.InferenceSession`` and
``subprocess.Popen`` raise, so a test that needs them fails until it is marked ``e2e``. The e2e tier
(``@pytest.mark.e2e``) converts and proves with ONNX Runtime, or runs the CLI in a process.
``make test-fast`` runs the plan tier, ``make test`` both.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SHARED_MODELS = ROOT.parent / "shared" / "models"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def load_build_models(script: str = "build_models"):
    """models/build_models.py (or another builder script there) as a module (it is a script, not a
    package), loaded once: every test file builds its example models with the same builders."""
    if script in sys.modules:
        return sys.modules[script]
    spec = importlib.util.spec_from_file_location(script, MODELS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[script] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def replace_fails(monkeypatch):
    """``replace_fails(when, errno, message)``: from then on ``os.replace`` raises ``OSError(errno,
    message)`` for each ``(src, dst)`` that ``when`` accepts (a full disk, a busy file) and renames
    as usual otherwise."""
    real = os.replace

    def arrange(when, errno: int = 28, message: str = "No space left on device") -> None:
        def replace(src, dst):
            if when(os.fspath(src), os.fspath(dst)):
                raise OSError(errno, message)
            return real(src, dst)

        monkeypatch.setattr(os, "replace", replace)

    return arrange


@pytest.fixture(scope="session")
def build_models():
    return load_build_models()


# ---- the two tiers ------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _plan_tier_runs_no_onnxruntime(request, monkeypatch):
    """In a test not marked e2e, starting an ONNX Runtime session or a process fails the test: at
    once (``pytest.fail`` is not an ``Exception``, so the verifier's own handlers let it through) and
    again at teardown, should anything have swallowed it."""
    if request.node.get_closest_marker("e2e") is not None:
        yield
        return
    import onnxruntime

    started: list[str] = []

    def refuse(what):
        def refused(*args, **kwargs):
            started.append(what)
            pytest.fail(f"{what} in a plan-tier test: mark the test @pytest.mark.e2e", pytrace=False)
        return refused

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse("onnxruntime.InferenceSession"))
    monkeypatch.setattr(subprocess, "Popen", refuse("subprocess.Popen"))
    yield
    call = getattr(request.node, "call_report", None)
    if started and call is not None and call.passed:  # the failure was caught and swallowed
        pytest.fail(f"{', '.join(sorted(set(started)))} in a plan-tier test: mark the test @pytest.mark.e2e",
                    pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.call_report = report
    return report


# ---- the real models, converted and proved once per mode -----------------------------------------

class RealModels:
    """The models of ``../shared/models``, each converted (and proved) once per set of options in a
    session, and every test about that model and mode reads the same result. A conversion that
    raises raises the same error in every test that asks for it. Each conversion runs in an empty
    scratch folder as the current directory; :meth:`files_left` lists what it left there."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._converted: dict[str, tuple] = {}
        self._verified: dict[str, tuple] = {}
        self._loaded: dict = {}

    def path(self, name: str) -> Path:
        path = self.folder / name
        if not path.is_file():
            pytest.skip(f"{name} not present")
        return path

    def load(self, name: str):
        """The model as a ``ModelProto``, loaded once: read it, never change it."""
        import onnx

        if name not in self._loaded:
            self._loaded[name] = onnx.load(str(self.path(name)))
        return self._loaded[name]

    def convert(self, name: str, **options):
        """``convert(path, **options)``, once per (model, options). The result is shared: read it,
        never change it."""
        from onnx_fc2conv import convert

        key = self._key(name, options)
        if key not in self._converted:
            path = self.path(name)
            with tempfile.TemporaryDirectory() as scratch:
                here = os.getcwd()
                os.chdir(scratch)
                try:
                    self._converted[key] = (convert(path, **options), None, sorted(os.listdir(scratch)))
                except Exception as exc:  # noqa: BLE001 - every test asking for it gets the same error
                    self._converted[key] = (None, exc, sorted(os.listdir(scratch)))
                finally:
                    os.chdir(here)
        result, error, _ = self._converted[key]
        if error is not None:
            raise error
        return result

    def converted(self, name: str, **options):
        """The conversion ``convert(name, **options)`` makes: the proved one where this session made
        it, else one made without the proof (the same model; proving it is the job of the tests that
        ask for :meth:`convert`). Read it, never change it."""
        proved = self._key(name, options)
        if proved in self._converted and self._converted[proved][1] is None:
            return self.convert(name, **options)
        return self.convert(name, **{**options, "verify": False})

    def files_left(self, name: str, **options) -> list[str]:
        """The files that ``convert(name, **options)`` left in its current folder."""
        key = self._key(name, options)
        if key not in self._converted:
            try:
                self.convert(name, **options)
            except Exception:  # noqa: BLE001 - the listing is asked for, not the result
                pass
        return self._converted[key][2]

    def verify_itself(self, name: str, **options):
        """``verify(original, original, **options)``, once per (model, options)."""
        from onnx_fc2conv import verify

        key = self._key(name, options, "verify")
        if key not in self._verified:
            original = self.load(name)
            try:
                self._verified[key] = (verify(original, original, **options), None)
            except Exception as exc:  # noqa: BLE001
                self._verified[key] = (None, exc)
        result, error = self._verified[key]
        if error is not None:
            raise error
        return result

    @staticmethod
    def _key(name: str, options: dict, function: str = "convert") -> str:
        """The model and every argument, defaults filled in: ``verify=True`` and no ``verify`` agree."""
        import inspect

        import onnx_fc2conv

        models = (None,) if function == "convert" else (None, None)
        bound = inspect.signature(getattr(onnx_fc2conv, function)).bind(*models, **options)
        bound.apply_defaults()
        return repr((name, sorted(bound.arguments.items())))  # numpy inputs repr as their values


@pytest.fixture(scope="session")
def real_models():
    return RealModels(SHARED_MODELS)
