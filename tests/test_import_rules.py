"""The custom import-linter contract (tools/import_rules.py) finds what rule 5 forbids, and the package keeps it."""

import sys

from tools.import_rules import violations


def test_finds_imports_inside_functions_and_private_names(tmp_path, monkeypatch):
    pkg = tmp_path / "toypkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "low.py").write_text("_secret = 1\npublic = 2\n")
    (pkg / "sub" / "high.py").write_text(
        "import json\n"
        "from ..low import public\n"  # fine: a module-level import of a public name
        "from ..low import _secret\n"  # a private name of another module
        "def f():\n"
        "    import matplotlib\n"  # fine: an optional heavy third-party dependency
        "    from .. import low\n"  # hidden: dodges the import graph
        "    import toypkg.low\n"
        "    return low\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = violations("toypkg.sub.high", "toypkg")
    assert found == ["toypkg.sub.high:3 imports the private name toypkg.low._secret",
                     "toypkg.sub.high:6 imports toypkg inside a function",
                     "toypkg.sub.high:7 imports toypkg.low inside a function"]
    assert violations("toypkg.low", "toypkg") == []
    sys.modules.pop("toypkg", None)


def test_tiltlm_has_no_hidden_imports():
    import pkgutil

    import tiltlm

    modules = ["tiltlm"] + [m.name for m in pkgutil.walk_packages(tiltlm.__path__, "tiltlm.")]
    assert [v for m in modules for v in violations(m, "tiltlm")] == []
