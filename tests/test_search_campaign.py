"""Campaign TOML parsing: the shipped examples load; mistakes name the file and the field."""
from __future__ import annotations

from pathlib import Path

import pytest

from avo_inductor.search.campaign import load_campaign, parse_campaign
from avo_inductor.spec import MaskKind

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
[campaign]
name = "t"
[search]
generations = 3
operators = ["structured"]
[defaults]
dtype = "float16"
head_dim = 64
seq_len = 512
[[spec]]
batch = 2
q_heads = 8
kv_heads = 2
causal = true
[[spec]]
label = "decode"
batch = 4
q_heads = 8
kv_heads = 2
q_len = 1
[[spec]]
batch = 2
q_heads = 8
kv_heads = 2
causal = true
"""


def test_parse_defaults_and_dedup() -> None:
    camp = parse_campaign(GOOD, "t.toml")
    assert camp.name == "t" and camp.search == {"generations": 3, "operators": ["structured"]}
    first, decode, _ = camp.entries
    assert (first.spec.q_len, first.spec.kv_len, first.spec.dtype, first.spec.causal) == (512, 512, "float16", True)
    assert (decode.spec.q_len, decode.spec.kv_len, decode.label) == (1, 512, "decode")  # default seq_len fills kv_len
    assert len(camp.specs) == 2  # the repeated entry is searched once


def test_shipped_campaigns_parse() -> None:
    core = load_campaign(ROOT / "search" / "h100-core.toml")
    assert len(core.specs) == 18 and all(s.dtype == "bfloat16" for s in core.specs)
    shapes = {(s.batch, s.q_heads, s.kv_heads, s.q_len, s.kv_len, s.head_dim, s.causal, s.window, s.mask, s.needs_grad)
              for s in core.specs}
    assert (4, 32, 8, 4096, 4096, 128, True, None, MaskKind.NONE, False) in shapes
    assert (4, 32, 32, 4096, 4096, 128, True, 1024, MaskKind.NONE, False) in shapes
    assert (1, 32, 8, 1, 32768, 128, False, None, MaskKind.NONE, False) in shapes
    assert (8, 16, 16, 2048, 2048, 64, True, None, MaskKind.NONE, True) in shapes
    assert {s.mask for s in core.specs} == set(MaskKind) - {MaskKind.BOOL}
    for name in ("llama-style.toml", "gpt2-style.toml"):
        assert load_campaign(ROOT / "search" / name).specs


@pytest.mark.parametrize("text, where", [
    ('[[spec]]\nbatch = 1\nq_heads = 2\nkv_head = 2\nseq_len = 8\nhead_dim = 16\n', "spec[0].kv_head: unknown field"),
    ('[[spec]]\nbatch = 1\nq_heads = 2\nkv_heads = 2\nhead_dim = 16\n', "spec[0].q_len: missing"),
    ('[[spec]]\nbatch = 1\nq_heads = 3\nkv_heads = 2\nseq_len = 8\nhead_dim = 16\n', "spec[0]: q_heads (3) must be a multiple"),
    ('[[spec]]\nbatch = 1\nq_heads = 2\nkv_heads = 2\nseq_len = 8\nhead_dim = 16\nmask = "diag"\n', "spec[0].mask: must be one of"),
    ('[[spec]]\nbatch = "1"\nq_heads = 2\nkv_heads = 2\nseq_len = 8\nhead_dim = 16\n', "spec[0].batch: expected int"),
    ('[[spec]]\nbatch = 1\nq_heads = 2\nkv_heads = 2\nseq_len = 8\nq_len = 4\nhead_dim = 16\n', "spec[0].seq_len: give either"),
    ('[search]\ngenerations = 2\n[[spec]]\nbatch = 1\nq_heads = 2\nkv_heads = 2\nseq_len = 8\nhead_dim = 16\ncausal = 1\n', "spec[0].causal: expected bool"),
    ('[search]\ngeneration = 2\n', "search.generation: unknown field"),
    ('[search]\noperators = ["genetic"]\n', "search.operators: unknown operator"),
    ('[campaign]\nname = "x"\n', "spec: no [[spec]] entries"),
    ('[[spec]\n', "syntax"),
    ('[model]\nx = 1\n', "model: unknown table"),
])
def test_errors_name_file_and_field(text: str, where: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_campaign(text, "camp/bad.toml")
    assert str(err.value).startswith("camp/bad.toml: ") and where in str(err.value), str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope.toml: cannot read campaign file"):
        load_campaign(tmp_path / "nope.toml")
