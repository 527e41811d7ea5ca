"""The CLI's commands and options, and the names normbench and normbench.layers export, against
the snapshot in tests/data/interfaces.json (taken before the layout moved)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

HERE = Path(__file__).parent / "data"
SAVED = json.loads((HERE / "interfaces.json").read_text())
spec = importlib.util.spec_from_file_location("snapshot_interfaces", HERE / "snapshot_interfaces.py")
snap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(snap)


def test_every_command_keeps_its_options_types_and_defaults():
    live = snap.cli_options()
    assert sorted(live) == sorted(SAVED["cli"]), "commands added or removed"
    for command, params in SAVED["cli"].items():
        assert live[command] == params, command


def test_every_name_normbench_and_its_layers_exported_is_still_there():
    live = snap.exports()
    assert live["normbench"] == SAVED["exports"]["normbench"]
    missing = set(SAVED["exports"]["normbench.layers"]) - set(live["normbench.layers"])
    assert not missing, f"normbench.layers no longer exports {sorted(missing)}"
