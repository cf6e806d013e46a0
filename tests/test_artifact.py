"""The typed currency (avo_inductor/artifact.py): one knob table drives every derived artifact; records, metrics,
genomes and launch configs parse defensively (ValueError, never TypeError/OverflowError)."""
from __future__ import annotations

import dataclasses
import json
import math
import pickle
from typing import Any

import pytest

from avo_inductor.artifact import (
    GENOME_SPACE,
    KNOBS,
    KernelGenome,
    KernelMetrics,
    KernelRecord,
    KernelSource,
    Knob,
    LaunchConfig,
    constants_block,
    genome_space,
    launch_dict,
    make_genome_class,
    make_launch_class,
    template_identity,
)
from avo_inductor.kernels.render import default_genome, render
from avo_inductor.parsing import load_json
from avo_inductor.search.operators import spec_space
from avo_inductor.spec import AttentionSpec, HardwareKey, MaskKind, SoftwareKey, kernel_id

CPU = HardwareKey("cpu", "triton-interpreter", (0, 0), 0)
H100 = HardwareKey("nvidia", "NVIDIA H100 80GB HBM3", (9, 0), 132)
SW = SoftwareKey("3.6.0", "2.11.0")
SPECS = [AttentionSpec(2, 4, 2, 17, 47, 16, dtype="float16", causal=True, needs_grad=True),
         AttentionSpec(3, 4, 4, 33, 33, 24, dtype="float32", mask=MaskKind.ALIBI),
         AttentionSpec(2, 8, 2, 1, 1024, 64, dtype="bfloat16")]


# ---- one table, every derived artifact ---------------------------------------------------------------------------

# The knob a contributor would add: a template constant, a launch key, a pruning rule (ALiBi only), forward only.
FAKE = Knob("fake_knob", (False, True), False, "a knob for this test", constant="FAKE_KNOB", launch_key="fake",
            prune="alibi", ws90="refused")
FAKE_INT = Knob("fake_tiles", (1, 2, 4), 2, "an int knob for this test", accepted=(1, 2, 4, 8), launch_key="FAKE_T",
                direction="bwd")


def test_a_new_knob_is_one_table_entry() -> None:
    knobs = (*KNOBS, FAKE, FAKE_INT)
    genome_cls: Any = make_genome_class(knobs, "FakeGenome", __name__)
    launch_cls: Any = make_launch_class(knobs, "FakeLaunch", __name__)
    # genome: a frozen field with the table's default, validated by the table, in to_dict/from_dict
    g = genome_cls()
    assert g.fake_knob is False and g.fake_tiles == 2 and g.to_dict()["fake_knob"] is False
    assert genome_cls.from_dict({**g.to_dict(), "fake_knob": True}).fake_knob is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.fake_knob = True
    for bad in ({"fake_knob": 1}, {"fake_tiles": 3}, {"fake_tiles": True}, {"fake_knobb": True}):
        with pytest.raises(ValueError, match="fake_knob|fake_tiles"):
            genome_cls.from_dict({**g.to_dict(), **bad})
    # search space and the rendered constants block
    assert genome_space(knobs)["fake_knob"] == (False, True) and "fake_knob" not in GENOME_SPACE
    assert "FAKE_KNOB = tl.constexpr(True)\n" in constants_block({**g.to_dict(), "fake_knob": True}, knobs)
    # launch dict, LaunchConfig field and key map, defaults for records written before the knob
    launch = launch_dict({**g.to_dict(), "fake_knob": True}, "fwd", knobs)
    assert launch["fake"] is True and launch["FAKE_T"] == 2
    cfg = launch_cls.from_dict(launch)
    assert cfg.fake is True and cfg.fake_t == 2 and cfg.to_dict() == launch
    assert launch_cls.from_dict({k: v for k, v in launch.items() if k != "fake"}).fake is False
    with pytest.raises(ValueError, match="FAKE_T"):
        launch_cls.from_dict({**launch, "FAKE_T": 16})
    # ws90 refuses a non-default refused knob
    with pytest.raises(ValueError, match="fake"):
        launch_cls.from_dict({**launch, "grid": "ws90", "BLOCK_M": 64, "BLOCK_N": 128})
    # the search's pruning: the alibi rule keeps it for ALiBi specs only; a backward knob needs grad
    alibi, causal = SPECS[1], SPECS[0]
    assert spec_space(alibi, CPU, knobs=knobs)["fake_knob"] == (False, True)
    assert "fake_knob" not in spec_space(causal, CPU, knobs=knobs)
    assert "fake_knob" not in spec_space(alibi, H100, "flash_ws90", knobs=knobs)
    assert spec_space(causal, CPU, knobs=knobs)["fake_tiles"] == (1, 2, 4) and "fake_tiles" not in \
        spec_space(alibi, CPU, knobs=knobs)
    # the shipped table is untouched
    assert not hasattr(KernelGenome(), "fake_knob") and "fake" not in LaunchConfig.key_map()


def test_derived_artifacts_match_the_table() -> None:
    names = [k.name for k in KNOBS]
    assert list(GENOME_SPACE) == names and all(GENOME_SPACE[k.name] == k.values for k in KNOBS)
    fields = dataclasses.fields(KernelGenome)  # type: ignore[arg-type]
    assert [f.name for f in fields] == [*names, "template"]
    assert all(getattr(KernelGenome(), k.name) == k.default for k in KNOBS)
    assert {k.launch_key for k in KNOBS if k.launch_key} | {"grid", "bwd_grid"} == set(LaunchConfig.key_map())
    for spec in SPECS:
        kernel = render(default_genome(spec, CPU), spec)
        assert isinstance(kernel, KernelSource) and isinstance(kernel.launch, LaunchConfig)
        block = kernel.source.split("# GENOME-CONSTANTS-START\n")[1].split("# GENOME-CONSTANTS-END")[0]
        assert block.splitlines() == [f"{k.constant} = tl.constexpr({getattr(default_genome(spec, CPU), k.name)})"
                                      for k in KNOBS if k.constant]
        assert kernel.kernel_id == kernel_id(kernel.sha256, kernel.entry_point, kernel.bwd_entry_point,
                                             kernel.launch_dict)


def test_generated_classes_pickle_and_hash() -> None:
    g = KernelGenome(block_m=32, exp2=False)
    cfg = LaunchConfig(block_m=32, tma=True)
    assert pickle.loads(pickle.dumps(g)) == g and pickle.loads(pickle.dumps(cfg)) == cfg
    assert hash(g) == hash(KernelGenome(block_m=32, exp2=False)) and g.replace(exp2=True).exp2 is True


# ---- defensive parsing -------------------------------------------------------------------------------------------


def _source_record() -> KernelRecord:
    spec = SPECS[0]
    kernel = render(default_genome(spec, CPU), spec)
    return KernelRecord(spec=spec, hardware=CPU, software=SW, source=kernel.source, entry_point=kernel.entry_point,
                        bwd_entry_point=kernel.bwd_entry_point, launch=kernel.launch_dict,
                        genome=default_genome(spec, CPU).to_dict(), metrics=KernelMetrics(median_ms=1.0, speedup=1.2),
                        created_at=1_700_000_000.0)


def _template_record() -> KernelRecord:
    spec = SPECS[1]
    g = default_genome(spec, CPU)
    kernel = render(g, spec)
    return KernelRecord(spec=spec, hardware=CPU, software=SW, source=None, entry_point=kernel.entry_point,
                        bwd_entry_point=kernel.bwd_entry_point, launch=kernel.launch_dict, genome=g.to_dict(),
                        tier="template", template_digest="0123456789abcdef", created_at=1_700_000_000.0)


@pytest.mark.parametrize("make", [_source_record, _template_record])
def test_record_round_trips_through_json(make) -> None:
    record = make()
    again = KernelRecord.from_dict(load_json(json.dumps(record.to_dict()), "record"))
    assert again == record and again.kernel_id == record.kernel_id
    assert ("source" in record.to_dict()) == (record.tier == "source")


def _set(path: str, value: Any):
    def edit(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            data = data[p]
        data[last] = value
    return edit


BAD_FIELDS = [
    ("metrics.speedup", math.nan), ("metrics.median_ms", math.inf), ("metrics.tflops", -1.0),
    ("metrics.rel_err", "0.1x"), ("metrics.baseline", 3), ("metrics", [1, 2]),
    ("created_at", math.nan), ("created_at", "yesterday"), ("format", 10 ** 400), ("format", 1.5), ("format", 3),
    ("launch.BLOCK_M", 10 ** 400), ("launch.BLOCK_M", 1e999), ("launch.BLOCK_M", 24), ("launch.BLOCK_M", True),
    ("launch.tma", "yes"), ("launch.grid", "warp"), ("launch", ["BLOCK_M"]), ("launch.SPEED", 2),
    ("genome.block_m", 24), ("genome.exp2", "true"), ("genome.num_warps", True), ("genome.kv_splits", 3),
    ("genome.template", "../evil"), ("genome.turbo", True), ("genome", "flash_v1"),
    ("spec", "b1-h2"), ("spec.batch", "two"), ("hardware", None), ("entry_point", 7), ("entry_point", "os.system"),
    ("bwd_entry_point", ["attn_bwd"]), ("parent_ids", "p0"), ("parent_ids", [1]), ("verified_software", {"a": 1}),
    ("sha256", 5), ("sha256", "0" * 64), ("tier", "trusted"), ("tier", None), ("operator", None),
]


@pytest.mark.parametrize("make", [_source_record, _template_record])
@pytest.mark.parametrize("path,value", BAD_FIELDS, ids=[f"{p}={str(v)[:12]}" for p, v in BAD_FIELDS])
def test_record_from_dict_refuses_bad_values_with_value_error(make, path: str, value: Any) -> None:
    data = make().to_dict()
    _set(path, value)(data)
    with pytest.raises(ValueError):
        KernelRecord.from_dict(data)


@pytest.mark.parametrize("data", [None, [], "record", {}, {"spec": {}}])
def test_record_from_dict_refuses_non_records(data: Any) -> None:
    with pytest.raises(ValueError):
        KernelRecord.from_dict(data)


def test_template_record_identity_covers_template_and_genome() -> None:
    record = _template_record()
    assert record.source is None and record.sha256 == template_identity(
        "flash_v1", record.template_digest, record.genome or {})
    other = dataclasses.replace(record, sha256="", template_digest="fedcba9876543210")
    assert other.kernel_id != record.kernel_id
    with pytest.raises(ValueError, match="no source"):
        dataclasses.replace(record, source="import os\n", sha256="")
    with pytest.raises(ValueError, match="template_digest"):
        dataclasses.replace(record, template_digest="", sha256="")
    data = {**record.to_dict(), "source": "import os\nos.system('x')\n"}  # a source smuggled into a template record
    assert KernelRecord.from_dict(data).source is None


def test_metrics_none_but_never_nan() -> None:
    assert KernelMetrics().speedup is None and KernelMetrics.from_dict({"speedup": 2, "future_field": 1}).speedup == 2.0
    for bad in (math.nan, math.inf, -math.inf, "nan", True):
        with pytest.raises(ValueError, match="speedup"):
            KernelMetrics(speedup=bad)


@pytest.mark.parametrize("launch", [{"BLOCK_M": 10 ** 30}, {"kv_splits": 3}, {"grid": "splitkv"},
                                    {"grid": "ws90", "num_warps": 8}, {"grid": "ws90", "tma": True},
                                    {"even_fast_path": 1}, {"num_stages": 0}, {"bwd_grid": "dq"}, 7])
def test_launch_config_refuses(launch: Any) -> None:
    with pytest.raises(ValueError):
        LaunchConfig.from_dict(launch)
