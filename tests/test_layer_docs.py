"""Every public layer is documented as Keras documents its own: each constructor argument under
`Args:`, a `Reference:` to its paper, and speed notes dated with the machine they came from."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from normbench import layers

PUBLIC = [layers.GroupNormalization, layers.InstanceNormalization, layers.BatchNormalization,
          layers.FilterResponseNormalization, layers.RMSNormalization, layers.WSConv2D]


def _args_section(doc: str) -> dict[str, str]:
    """{argument: its description} from a Google-style `Args:` section."""
    lines = doc.split("Args:\n", 1)[1].splitlines()
    found, name = {}, None
    for line in lines:
        if not line.strip():
            if found:
                break
            continue
        match = re.match(r"^ {8}(\*{0,2}\w+): (.+)$", line)
        if match:
            name = match.group(1)
            found[name] = match.group(2)
        elif line.startswith(" " * 12) and name:
            found[name] += " " + line.strip()
        else:
            break
    return found


@pytest.mark.parametrize("layer", PUBLIC, ids=lambda c: c.__name__)
def test_every_constructor_argument_is_documented(layer):
    assert "Args:\n" in layer.__doc__, f"{layer.__name__} has no Args: section"
    documented = _args_section(layer.__doc__)
    wanted = []
    for p in inspect.signature(layer.__init__).parameters.values():
        if p.name == "self":
            continue
        wanted.append({inspect.Parameter.VAR_KEYWORD: f"**{p.name}",
                       inspect.Parameter.VAR_POSITIONAL: f"*{p.name}"}.get(p.kind, p.name))
    assert sorted(documented) == sorted(wanted), layer.__name__
    assert all(len(text) > 10 for text in documented.values())


@pytest.mark.parametrize("layer", PUBLIC, ids=lambda c: c.__name__)
def test_every_layer_cites_its_paper(layer):
    reference = layer.__doc__.split("Reference:", 1)
    assert len(reference) == 2 and "https://arxiv.org/abs/" in reference[1], layer.__name__


def test_speed_notes_carry_date_and_machine():
    """A number of x or ms about speed in a layer's source names when and where it was measured."""
    for path in sorted(Path(layers.__file__).parent.glob("*.py")):
        text = path.read_text()
        for match in re.finditer(r"(?i)(faster|slower|pay off|ran at)", text):
            window = text[max(0, match.start() - 300): match.end() + 300]
            assert re.search(r"20\d\d-\d\d", window) and re.search(r"(?i)core|cpu|xeon|epyc",
                                                                  window), \
                f"{path.name}: a speed note without its date and machine: {window[250:400]!r}"
